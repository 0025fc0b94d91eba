"""Dataset cartography (Swayamdipta et al., EMNLP 2020) of the labeled and the unlabeled set, during SSL training.

Per sample and epoch (an epoch is one pass of a set's own sample stream, so every sample is seen
exactly once per epoch) it records the probability of the target and whether the prediction was
right, in arrays preallocated for the whole run. Labeled set: target = the given label. Unlabeled
set: target = that epoch's pseudo-label, "right" = the pseudo-label equals the hidden true label,
with a map before and after debiasing for DebiasPL. Every `figure_interval` steps and at the end
it writes data maps, allenai/cartography's td_metrics.jsonl and the top-k ambiguous / hard-to-learn
samples; optionally allenai's per-epoch training_dynamics files.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from debiaspl.analysis.cartography import region_of, td_metrics_records, top_k, training_dynamics_metrics
from debiaspl.analysis.plots import data_map_figure
from debiaspl.config import option
from debiaspl.data.loaders import stream_epochs
from debiaspl.hooks.base import Hook, RunContext, StepRecord


@dataclass(frozen=True)
class CartographyOptions:
    labeled: bool = option(True, "map the labeled set (target: the given label)")
    unlabeled: bool = option(True, "map the unlabeled set (target: the pseudo-label; right = equals the hidden label)")
    figure_interval: int = option(5000, "write data maps, td_metrics.jsonl and top-k CSVs every this many steps (and at the end)", ge=1)
    top_k: int = option(100, "rows of the ambiguous / hard-to-learn CSV files", ge=1)
    export_allenai: bool = option(False, "also write allenai/cartography's training_dynamics/dynamics_epoch_N.jsonl (logits of every sample every epoch: large for long runs)")


class _Map:
    """Training dynamics of one set under one target, [N, E] on the device."""

    def __init__(self, name: str, ids: list[str], labels: torch.Tensor, batch_size: int, epochs: int,
                 device: torch.device, track_changes: bool):
        self.name, self.ids, self.labels, self.batch_size = name, ids, labels, batch_size
        size = len(ids)
        self.target_prob = torch.full((size, epochs), float("nan"), dtype=torch.float16, device=device)
        self.correct = torch.full((size, epochs), -1, dtype=torch.int8, device=device)
        self.changes = torch.zeros(size, dtype=torch.int32, device=device) if track_changes else None
        self.last_label = torch.full((size,), -1, dtype=torch.long, device=device) if track_changes else None

    def record(self, step: int, idx: torch.Tensor, probs: torch.Tensor, target: torch.Tensor,
               correct: torch.Tensor) -> None:
        """One batch (step counted from 1); scattered in place, no host sync."""
        epochs = stream_epochs(len(self.ids), self.batch_size, step - 1).to(idx.device, non_blocking=True)
        self.target_prob[idx, epochs] = probs.gather(1, target[:, None]).squeeze(1).half()
        self.correct[idx, epochs] = correct.to(torch.int8)
        if self.changes is not None:
            previous = self.last_label[idx]
            self.changes[idx] += ((previous >= 0) & (previous != target)).int()
            self.last_label[idx] = target

    def epochs_seen(self, step: int) -> int:
        return (step * self.batch_size - 1) // len(self.ids) + 1 if step else 0

    def state(self, step: int) -> dict:
        seen = self.epochs_seen(step)  # only the columns filled so far: checkpoints grow with the run
        state = {"target_prob": self.target_prob[:, :seen].cpu(), "correct": self.correct[:, :seen].cpu()}
        if self.changes is not None:
            state.update(changes=self.changes.cpu(), last_label=self.last_label.cpu())
        return state

    def load(self, state: dict) -> None:
        seen = state["target_prob"].shape[1]
        self.target_prob[:, :seen] = state["target_prob"].to(self.target_prob.device)
        self.correct[:, :seen] = state["correct"].to(self.correct.device)
        if self.changes is not None:
            self.changes.copy_(state["changes"])
            self.last_label.copy_(state["last_label"])


class _AllenaiExport:
    """allenai/cartography's training_dynamics/dynamics_epoch_N.jsonl, one file per completed epoch.

    Keeps the current epoch's logits [N, C]; a file is written (one host sync) when an epoch ends.
    gold is the given label for the labeled set and the hidden true label for the unlabeled set.
    """

    def __init__(self, folder: Path, ids: list[str], gold: torch.Tensor, batch_size: int, num_classes: int,
                 device: torch.device):
        self.folder, self.ids, self.gold, self.batch_size = folder, ids, gold, batch_size
        self.logits = torch.zeros(len(ids), num_classes, device=device)

    def record(self, step: int, idx: torch.Tensor, logits: torch.Tensor) -> None:
        size, start = len(self.ids), (step - 1) * self.batch_size
        position = 0
        while position < self.batch_size:  # a batch may end one epoch and start the next
            epoch = (start + position) // size
            end = min(self.batch_size, (epoch + 1) * size - start)
            self.logits[idx[position:end]] = logits[position:end]
            if (start + end) % size == 0:
                self._write(epoch)
            position = end

    def _write(self, epoch: int) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        rows = zip(self.ids, self.logits.cpu().tolist(), self.gold.cpu().tolist())
        lines = "".join(json.dumps({"guid": guid, f"logits_epoch_{epoch}": row, "gold": gold}) + "\n"
                        for guid, row, gold in rows)
        _write_text(self.folder / f"dynamics_epoch_{epoch}.jsonl", lines)

    def state(self) -> dict:
        return {"logits": self.logits.cpu()}

    def load(self, state: dict) -> None:
        self.logits.copy_(state["logits"])


class CartographyHook(Hook):
    name = "cartography"
    Options = CartographyOptions

    def __init__(self, options: CartographyOptions):
        super().__init__(options)
        self._pending_state: dict | None = None
        self._written_step = -1

    def on_train_start(self, context: RunContext) -> None:
        self.context, opts = context, self.options
        self.step = context.start_step
        self.maps: dict[str, _Map] = {}
        self.exports: dict[str, _AllenaiExport] = {}
        folder = context.run_dir / "cartography"

        def add_map(name, ids, labels, batch_size, track_changes):
            epochs = (context.total_steps * batch_size - 1) // len(ids) + 1
            self.maps[name] = _Map(name, ids, labels, batch_size, epochs, context.device, track_changes)

        if opts.labeled:
            add_map("labeled", context.labeled_ids, context.labeled_labels, context.batch_size, False)
        if opts.unlabeled:
            debiased = context.tau > 0
            add_map("unlabeled", context.unlabeled_ids, context.unlabeled_labels, context.unlabeled_batch_size, True)
            if debiased:
                add_map("unlabeled_before_debiasing", context.unlabeled_ids, context.unlabeled_labels,
                        context.unlabeled_batch_size, True)
        if opts.export_allenai:
            for name, ids, gold, batch in (("labeled", context.labeled_ids, context.labeled_labels, context.batch_size),
                                           ("unlabeled", context.unlabeled_ids, context.unlabeled_labels,
                                            context.unlabeled_batch_size)):
                if name in self.maps:
                    self.exports[name] = _AllenaiExport(folder / name / "training_dynamics", ids, gold, batch,
                                                        context.num_classes, context.device)
        if self._pending_state is not None:
            for name, state in self._pending_state["maps"].items():
                if name in self.maps:
                    self.maps[name].load(state)
            for name, state in self._pending_state["exports"].items():
                if name in self.exports:
                    self.exports[name].load(state)
            self._pending_state = None

    def on_step_end(self, record: StepRecord) -> None:
        self.step = record.step
        if "labeled" in self.maps:
            probs = torch.softmax(record.logits_lb, dim=1)
            self.maps["labeled"].record(record.step, record.idx_lb, probs, record.y_lb,
                                        probs.argmax(dim=1) == record.y_lb)
        if "unlabeled" in self.maps:
            self.maps["unlabeled"].record(record.step, record.idx_ulb, record.probs_pseudo, record.pseudo_labels,
                                          record.pseudo_labels == record.y_ulb)
        if "unlabeled_before_debiasing" in self.maps:
            raw_labels = record.probs_weak.argmax(dim=1)
            self.maps["unlabeled_before_debiasing"].record(record.step, record.idx_ulb, record.probs_weak, raw_labels,
                                                           raw_labels == record.y_ulb)
        if "labeled" in self.exports:
            self.exports["labeled"].record(record.step, record.idx_lb, record.logits_lb)
        if "unlabeled" in self.exports:
            self.exports["unlabeled"].record(record.step, record.idx_ulb, record.logits_weak)
        if record.step % self.options.figure_interval == 0:
            self.write_outputs(record.step)

    def on_train_end(self, step: int) -> None:
        self.write_outputs(step)

    def write_outputs(self, step: int) -> None:
        """Data maps (TensorBoard + PNG), td_metrics.jsonl, top-k CSVs and region shares of every map."""
        if step == self._written_step or step == 0:
            return
        self._written_step = step
        log, scalars = self.context.log, {}
        for name, dynamics in self.maps.items():
            seen = dynamics.epochs_seen(step)
            metrics = training_dynamics_metrics(dynamics.target_prob[:, :seen].float().cpu(),
                                                dynamics.correct[:, :seen].cpu())
            folder = self.context.run_dir / "cartography" / name
            figure = data_map_figure(metrics["confidence"], metrics["variability"], metrics["correctness"],
                                     f"{name} data map, {seen} epochs (step {step})")
            log.figure(f"cartography/{name}/data_map", figure, step, folder / "data_map.png")
            records = td_metrics_records(dynamics.ids, metrics)
            _write_text(folder / "td_metrics.jsonl", "".join(json.dumps(r) + "\n" for r in records))
            changes = dynamics.changes.cpu() if dynamics.changes is not None else None
            for region in ("ambiguous", "hard-to-learn"):
                order = top_k(region, metrics, self.options.top_k)
                _write_text(folder / f"{region.replace('-', '_')}.csv", self._csv(dynamics, metrics, order, changes))
            regions = region_of(metrics["confidence"], metrics["variability"])
            observed = [r for r, n in zip(regions, metrics["epochs_observed"]) if n > 0]
            for region in ("easy-to-learn", "ambiguous", "hard-to-learn"):
                share = sum(r == region for r in observed) / max(len(observed), 1)
                scalars[f"cartography/{name}/share_{region.replace('-', '_')}"] = share
            if changes is not None:
                scalars[f"cartography/{name}/pseudo_label_changes_mean"] = float(changes.float().mean())
        log.scalars(step, scalars)

    def _csv(self, dynamics: _Map, metrics: dict, order, changes: torch.Tensor | None) -> str:
        is_unlabeled = dynamics.changes is not None
        header = ["rank", "sample_id", "hidden_label" if is_unlabeled else "label", "confidence", "variability",
                  "correctness", "forgetfulness"] + (["pseudo_label_changes"] if is_unlabeled else [])
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(header)
        labels = dynamics.labels.cpu()
        for rank, index in enumerate(order, start=1):
            index = int(index)
            row = [rank, dynamics.ids[index], self.context.class_names[int(labels[index])],
                   f"{float(metrics['confidence'][index]):.6f}", f"{float(metrics['variability'][index]):.6f}",
                   f"{float(metrics['correctness'][index]):.6f}", int(metrics["forgetfulness"][index])]
            writer.writerow(row + ([int(changes[index])] if is_unlabeled else []))
        return out.getvalue()

    def on_save_checkpoint(self) -> dict:
        return {"maps": {name: m.state(self.step) for name, m in self.maps.items()},
                "exports": {name: e.state() for name, e in self.exports.items()}}

    def on_load_checkpoint(self, state: dict) -> None:
        self._pending_state = state  # the arrays are allocated once the run's sizes are known


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
