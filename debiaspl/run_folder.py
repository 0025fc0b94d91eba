"""The run folder: its file names, and reading and writing its files safely.

`runs/<name>/` holds config.yaml (the resolved config), run_info.json (class names, counts,
normalization), metrics.jsonl, TensorBoard event files, checkpoint.pt (the latest, resumable),
snapshots/step_*.pt (model weights and algorithm state kept for TracIn, when logging.snapshot_interval is set) and
results.json (when the run finished). The trainer writes it; the offline verbs (eval, influence,
select) read it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from debiaspl.config import ExperimentConfig, from_dict, upgrade_legacy_config
from debiaspl.errors import UserError

CONFIG_NAME, CHECKPOINT_NAME, RESULTS_NAME, RUN_INFO_NAME = "config.yaml", "checkpoint.pt", "results.json", "run_info.json"
METRICS_NAME = "metrics.jsonl"
SNAPSHOT_FOLDER = "snapshots"
LABEL_FILE_COPY = "label_file.csv"  # data.label_file as the run trained on it (the original may change later)
# Format 2: the algorithm's state (q_hat and the base's own) under "algorithm"; format 1 kept only q_hat,
# as "class_marginal", and a flat algorithm config. Both are read.
CHECKPOINT_FORMAT = 2
CHECKPOINT_KEYS = ("format", "step", "model", "ema", "optimizer", "scheduler", "algorithm", "monitor", "hooks", "rng",
                   "config")


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path` (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path) -> dict:
    """Load with weights_only=True (no arbitrary code from the file) onto the CPU."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint not found: {path}") from None
    except Exception as exc:  # torch raises many types here; its long advice is not for our users
        raise UserError(f"cannot read checkpoint {path} ({type(exc).__name__}): it is corrupt or not a "
                        f"checkpoint; move it away to start the run afresh") from None


def load_run_checkpoint(path: str | Path) -> tuple[dict, ExperimentConfig]:
    """A trainer checkpoint, checked for its format and keys, with the config it was trained under.

    A format-1 checkpoint comes back in format 2, so older runs resume and are analysed as before.
    """
    state = load_checkpoint(path)
    state = upgrade_format_1(state)
    missing = [key for key in CHECKPOINT_KEYS if not isinstance(state, dict) or key not in state]
    if missing or state.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not a debiaspl checkpoint of format {CHECKPOINT_FORMAT} "
                        f"(missing: {', '.join(missing) or 'none'}); move it away to start the run afresh")
    return state, from_dict(state["config"], source=str(path))


def upgrade_format_1(state):
    """A format-1 trainer checkpoint or snapshot (q_hat as "class_marginal", flat algorithm config) in
    format 2; anything else (format 2, or not a checkpoint at all) as it is."""
    if not isinstance(state, dict) or "class_marginal" not in state or "algorithm" in state:
        return state
    state = {**state, "algorithm": {"class_marginal": state["class_marginal"]}}
    del state["class_marginal"]
    if "config" in state:
        state.update(format=CHECKPOINT_FORMAT, config=upgrade_legacy_config(state["config"]))
    return state


def snapshot_path(run_dir: Path, step: int) -> Path:
    return run_dir / SNAPSHOT_FOLDER / f"step_{step:09d}.pt"


def list_snapshots(run_dir: Path) -> list[Path]:
    """Snapshot files of a run, by step."""
    return sorted((run_dir / SNAPSHOT_FOLDER).glob("step_*.pt"))


def require_run_folder(run_dir: Path) -> Path:
    """The folder, resolved, or a UserError saying what is missing."""
    run_dir = run_dir.resolve()
    if not (run_dir / CONFIG_NAME).is_file() or not (run_dir / CHECKPOINT_NAME).is_file():
        raise UserError(f"{run_dir} is not a run folder with a checkpoint (no {CONFIG_NAME} or {CHECKPOINT_NAME} in it)")
    return run_dir
