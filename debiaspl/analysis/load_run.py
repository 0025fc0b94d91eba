"""Rebuild a finished (or paused) run for offline analysis: its config, data, model weights and algorithm state."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from debiaspl.algorithm import Algorithm, AlgorithmState
from debiaspl.config import ExperimentConfig, replace_dotted
from debiaspl.data.prepare import TrainingData, prepare_data
from debiaspl.device import resolve_device
from debiaspl.errors import UserError
from debiaspl.models import build_model
from debiaspl.run_folder import (CHECKPOINT_FORMAT, CHECKPOINT_NAME, LABEL_FILE_COPY, RUN_INFO_NAME, load_checkpoint,
                                 load_run_checkpoint, require_run_folder, upgrade_format_1)


@dataclass
class LoadedRun:
    run_dir: Path
    config: ExperimentConfig
    data: TrainingData
    model: nn.Module               # in eval mode, on `device`
    algorithm: Algorithm           # what the run trained with: its pseudo-label rule and loss adjustment
    algorithm_state: AlgorithmState  # on the CPU, at the checkpoint (q_hat and the base's own state)
    step: int
    device: torch.device
    mean: torch.Tensor             # [C_in] normalization, on `device`
    std: torch.Tensor

    @property
    def class_marginal(self) -> torch.Tensor:
        """q_hat [C] float32 at the checkpoint."""
        return self.algorithm_state["class_marginal"]

    def load_weights(self, state_dict: dict) -> None:
        self.model.load_state_dict(state_dict)
        self.model.eval()


def load_run(run_dir: Path, weights: Literal["ema", "model"] = "ema", device: str = "auto",
             data_root: str | None = None) -> LoadedRun:
    """The run's checkpoint with the EMA weights (what its evaluations used) or the raw model's.

    `data_root` points at the data when it moved since training.
    """
    run_dir = require_run_folder(Path(run_dir))
    state, config = load_run_checkpoint(run_dir / CHECKPOINT_NAME)
    config = replace_dotted(config, "data.download", False)  # the data was there when the run trained
    if data_root is not None:
        config = replace_dotted(config, "data.root", data_root)
    if config.data.label_file and (run_dir / LABEL_FILE_COPY).is_file():
        config = replace_dotted(config, "data.label_file", str(run_dir / LABEL_FILE_COPY))
    resolved = resolve_device(device)
    try:
        data = prepare_data(config.data)
    except UserError as exc:
        raise UserError(f"{exc} (if the data moved since training, pass --data-root)") from None
    _check_same_data(data, run_dir)
    model = build_model(config.model.name, data.num_classes, data.image_shape[0], config.model.dropout,
                        config.model.wrn_variant).to(resolved)
    model.load_state_dict(state["ema" if weights == "ema" else "model"])
    model.eval()
    return LoadedRun(run_dir, config, data, model, config.algorithm.build(), dict(state["algorithm"]), int(state["step"]),
                     resolved, torch.tensor(data.mean, device=resolved), torch.tensor(data.std, device=resolved))


def _check_same_data(data: TrainingData, run_dir: Path) -> None:
    """The rebuilt split must be the one the run trained on (run_info.json), or every result is off."""
    info_path = run_dir / RUN_INFO_NAME
    if not info_path.is_file():
        return
    info = json.loads(info_path.read_text())
    for key in ("class_names", "labeled_counts", "unlabeled_counts"):
        if key in info and info[key] != data.summary()[key]:
            raise UserError(f"{run_dir}: the data rebuilt now differs from what the run trained on ({key}: "
                            f"{info[key]} then, {data.summary()[key]} now); point --data-root at the same data")


def class_index(name: str, class_names: list[str], flag: str) -> int:
    """A class given by name or index on the command line (`flag` names the option in the error)."""
    if name in class_names:
        return class_names.index(name)
    if name.isdecimal() and int(name) < len(class_names):
        return int(name)
    raise UserError(f"{flag}: {name!r} is not a class of this run ({', '.join(class_names)})")


def cartography_metric(run: LoadedRun, split: str, column: str, needed_by: str) -> torch.Tensor:
    """[N] float64 of one td_metrics.jsonl column (confidence, variability, correctness) the cartography hook
    wrote for `split` ("labeled" or "unlabeled"), in the run's sample order; NaN for images not yet mapped.
    `needed_by` names what reads it, for the error when the hook did not run."""
    path = run.run_dir / "cartography" / split / "td_metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{needed_by} reads {path}, which is not there: train with the cartography hook "
                        f"on (hooks: [{{name: cartography}}]); its maps appear after the first complete epoch")
    values = {row["guid"]: row[column] for row in map(json.loads, path.read_text().splitlines())}
    images = run.data.labeled if split == "labeled" else run.data.unlabeled
    return torch.tensor([values.get(sample_id) if values.get(sample_id) is not None else float("nan")
                         for sample_id in images.sample_ids], dtype=torch.float64)


def load_snapshot(path: Path) -> dict:
    """A snapshots/step_*.pt file: step, lr (of the step that produced it), model weights, algorithm state."""
    state = load_checkpoint(path)
    state = upgrade_format_1(state)
    if not isinstance(state, dict) or not {"step", "lr", "model", "algorithm"} <= set(state):
        raise UserError(f"{path} is not a debiaspl snapshot of format {CHECKPOINT_FORMAT} (expected step, lr, model "
                        f"and algorithm)")
    return state

