"""The run folder: its file names, and reading and writing its files safely.

`runs/<name>/` holds config.yaml (the resolved config), run_info.json (class names, counts,
normalization), metrics.jsonl, TensorBoard event files, checkpoint.pt (the latest, resumable),
snapshots/step_*.pt (model weights and algorithm state kept for TracIn, when logging.snapshot_interval is set) and
results.json (when the run finished). The trainer writes it; the offline verbs (eval, influence,
select) read it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
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


PREVIOUS_CHECKPOINT_NAME = "checkpoint.previous.pt"  # the one before the latest, kept to go back to
DIGESTS_KEY = "tensor_digests"  # dotted path of every tensor in the state -> BLAKE2b of its bytes


def save_checkpoint(state: dict, path: str | Path, keep_previous: bool = False) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path` (atomic on POSIX).

    The file carries a digest of every tensor, checked on load, so damaged bytes are refused rather
    than trained on. With `keep_previous`, the file it replaces stays as PREVIOUS_CHECKPOINT_NAME (a
    hard link, so at every instant `path` is a whole checkpoint, old or new).
    """
    path = Path(path)
    state = {**state, DIGESTS_KEY: tensor_digests(state)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise UserError(f"cannot write checkpoint {path}: {exc.strerror} (errno {exc.errno})") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        if keep_previous and path.is_file() and not path.is_symlink():
            _replace_by_link(path, path.with_name(PREVIOUS_CHECKPOINT_NAME))
        os.replace(tmp_name, path)
    except OSError as exc:  # a full disk or a read-only folder: the checkpoint already there stays whole
        Path(tmp_name).unlink(missing_ok=True)
        raise UserError(f"cannot write checkpoint {path}: {exc.strerror} (errno {exc.errno}); "
                        f"the previous checkpoint, if any, is intact") from None
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _replace_by_link(source: Path, target: Path) -> None:
    staged = target.with_name(f".{target.name}.link.tmp")
    staged.unlink(missing_ok=True)
    try:
        os.link(source, staged)
    except OSError:  # a file system without hard links
        shutil.copyfile(source, staged)
    os.replace(staged, target)


def tensor_digests(state) -> dict[str, str]:
    """BLAKE2b (16 bytes) of the raw bytes of every tensor in a nested state, by dotted path."""
    digests: dict[str, str] = {}

    def visit(value, where: str) -> None:
        if isinstance(value, torch.Tensor):
            raw = value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
            digests[where] = hashlib.blake2b(raw.data, digest_size=16).hexdigest()
        elif isinstance(value, dict):
            for key, item in value.items():
                if key != DIGESTS_KEY:
                    visit(item, f"{where}.{key}" if where else str(key))
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                visit(item, f"{where}.{index}")

    visit(state, "")
    return digests


def load_checkpoint(path: str | Path) -> dict:
    """Load with weights_only=True (no arbitrary code from the file) onto the CPU, its tensors checked
    against the digests saved with them (files written before digests existed load unchecked)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint not found: {path}") from None
    except Exception as exc:  # torch raises many types here; its long advice is not for our users
        raise UserError(f"cannot read checkpoint {path} ({type(exc).__name__}): it is corrupt or not a "
                        f"checkpoint; {way_back(path)}") from None
    if isinstance(state, dict) and DIGESTS_KEY in state:
        saved = state.pop(DIGESTS_KEY)
        found = tensor_digests(state)
        damaged = sorted(key for key in saved.keys() | found.keys() if saved.get(key) != found.get(key))
        if damaged:
            raise UserError(f"checkpoint {path} is damaged: {len(damaged)} tensor(s) do not match the checksums "
                            f"saved with them (first: {damaged[0]}); {way_back(path)}")
    return state


def way_back(path: Path) -> str:
    previous = path.with_name(PREVIOUS_CHECKPOINT_NAME)
    if path.name == CHECKPOINT_NAME and previous.is_file():
        return f"the checkpoint before it is {previous}: move it over {path} to resume from there"
    return "move it away to start the run afresh"


def load_run_checkpoint(path: str | Path) -> tuple[dict, ExperimentConfig]:
    """A trainer checkpoint, checked for its format and keys, with the config it was trained under.

    A format-1 checkpoint comes back in format 2, so older runs resume and are analysed as before.
    """
    state = load_checkpoint(path)
    state = upgrade_format_1(state)
    missing = [key for key in CHECKPOINT_KEYS if not isinstance(state, dict) or key not in state]
    if missing or state.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not a debiaspl checkpoint of format {CHECKPOINT_FORMAT} "
                        f"(missing: {', '.join(missing) or 'none'}); {way_back(Path(path))}")
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


def require_run_folder(run_dir: Path, needs_checkpoint: bool = True) -> Path:
    """The folder, resolved, or a UserError saying what is missing (a run killed before its first
    checkpoint has only its config: `needs_checkpoint=False` accepts it, to resume from step 0)."""
    run_dir = run_dir.resolve()
    if not (run_dir / CONFIG_NAME).is_file():
        raise UserError(f"{run_dir} is not a run folder (no {CONFIG_NAME} in it)")
    if needs_checkpoint and not (run_dir / CHECKPOINT_NAME).is_file():
        raise UserError(f"{run_dir} has no {CHECKPOINT_NAME} yet (the run stopped before its first one): resume it "
                        f"from step 0 with `debiaspl train --resume {run_dir}`")
    refuse_symlinks(run_dir)
    return run_dir


def refuse_symlinks(run_dir: Path) -> None:
    """A run folder holds only real files and folders: a planted link (a downloaded run's config.yaml or
    eval/ pointing elsewhere) would make us read or write outside it."""
    for path in run_dir.rglob("*"):
        if path.is_symlink():
            raise UserError(f"{path} is a symbolic link (to {os.readlink(path)}); a run folder holds only real files "
                            f"and folders, so debiaspl neither reads nor writes through it: replace it with a copy "
                            f"or remove it")


class RunFolderLock:
    """One writer per run folder: an exclusive flock on `.NAME.lock` beside the folder (so a refused
    run leaves the folder itself untouched), with the owner's pid and host in it.

    The kernel drops the lock when its process ends, however it ends, so a lock left by a killed run
    is stale by construction and the next run takes it over.
    """

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self._handle = None

    @property
    def path(self) -> Path:
        return self.run_dir.parent / f".{self.run_dir.name}.lock"

    def acquire(self) -> None:
        import fcntl
        import socket

        while True:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                handle = open(self.path, "a+")
            except OSError as exc:
                raise UserError(f"cannot write beside the run folder {self.run_dir}: {exc.strerror} "
                                f"(errno {exc.errno})") from None
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.seek(0)
                owner = handle.read().strip() or "another process"
                handle.close()
                raise UserError(f"{self.run_dir} is being written by {owner}; wait for it to finish, or give this "
                                f"run another name with --set logging.run_name=NEW_NAME") from None
            try:  # the owner before us may have removed the file between our open and our lock: lock anew
                if os.stat(self.path).st_ino == os.fstat(handle.fileno()).st_ino:
                    break
            except FileNotFoundError:
                pass
            handle.close()
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        self._handle = handle

    @property
    def held(self) -> bool:
        return self._handle is not None

    def release(self) -> None:
        """Remove the lock file, then drop the lock (a killed run leaves the file, unlocked, for the next)."""
        if self._handle is not None:
            self.path.unlink(missing_ok=True)
            self._handle.close()
            self._handle = None


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete the temporary files a killed writer left (`.NAME.XXXX.tmp`); call with the lock held."""
    stale = [path for folder in (run_dir, run_dir / SNAPSHOT_FOLDER) if folder.is_dir()
             for path in folder.glob(".*.tmp") if path.is_file() and not path.is_symlink()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
