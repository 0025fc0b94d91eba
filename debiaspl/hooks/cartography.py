"""Dataset cartography (Swayamdipta et al., EMNLP 2020) of the labeled and the unlabeled set, during SSL training.

Per sample and epoch (an epoch is one pass of a set's own sample stream, so every sample is seen
exactly once per epoch) it records the probability of the target and whether the prediction was
right, in arrays preallocated for the whole run. Labeled set: target = the given label. Unlabeled
set: target = that epoch's pseudo-label, "right" = the pseudo-label equals the hidden true label,
with a map before and after debiasing for DebiasPL. Every `figure_interval` steps and at the end
it writes data maps (coloured by correctness; and by class, beside each class's share of every
region, head to tail), allenai/cartography's td_metrics.jsonl and the top-k ambiguous / hard-to-learn
samples; optionally allenai's per-epoch training_dynamics files.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from debiaspl.metrics.cartography import region_of, td_metrics_records, top_k, training_dynamics_metrics
from debiaspl.metrics.gallery import GalleryRow, entries_from, write_gallery
from debiaspl.metrics.plots import data_map_by_class_figure, data_map_figure, save_figure
from debiaspl.files import write_csv, write_text
from debiaspl.options import option
from debiaspl.data.loaders import stream_epoch_segments
from debiaspl.hooks.base import Hook, RunContext, StepRecord


# per map: the target whose probability is the confidence, when a prediction counts as right, the class of a sample
_MAP_MEANINGS = {
    "labeled": ("the given label", "the prediction was the given label", "class: the given label"),
    "unlabeled": ("the pseudo-label", "the pseudo-label was the hidden true label", "class: the hidden true label"),
    "unlabeled_before_debiasing": ("the raw weak-view argmax", "the raw argmax was the hidden true label",
                                   "class: the hidden true label")}


@dataclass(frozen=True)
class CartographyOptions:
    labeled: bool = option(True, "map the labeled set (target: the given label)")
    unlabeled: bool = option(True, "map the unlabeled set (target: the pseudo-label; right = equals the hidden label)")
    figure_interval: int = option(5000, "write data maps, td_metrics.jsonl and top-k CSVs every this many steps (and at the end)", ge=1)
    top_k: int = option(100, "rows of the ambiguous / hard-to-learn CSV files", ge=1)
    gallery_size: int = option(8, "images per region (easy-to-learn, ambiguous, hard-to-learn) in the galleries drawn at the end of training (0: none)", ge=0)
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
        """One batch (step counted from 1); scattered in place, no host sync.

        Written per epoch segment: within one, indices are unique, so the in-place updates of the
        change counter see every occurrence (a batch crossing an epoch boundary can hold a sample twice).
        """
        target_prob = probs.gather(1, target[:, None]).squeeze(1).half()
        correct = correct.to(torch.int8)
        for epoch, start, end in stream_epoch_segments(len(self.ids), self.batch_size, step - 1):
            rows = idx[start:end]
            self.target_prob[rows, epoch] = target_prob[start:end]
            self.correct[rows, epoch] = correct[start:end]
            if self.changes is not None:
                previous, current = self.last_label[rows], target[start:end]
                self.changes[rows] += ((previous >= 0) & (previous != current)).int()
                self.last_label[rows] = current

    def epochs_seen(self, step: int) -> int:
        """Epochs with at least one sample recorded (the last may be partial): what a checkpoint keeps."""
        return (step * self.batch_size - 1) // len(self.ids) + 1 if step else 0

    def epochs_complete(self, step: int) -> int:
        """Epochs every sample has been seen in: what the maps and metrics use."""
        return step * self.batch_size // len(self.ids)

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

    Keeps the current epoch's logits [N, C]; a file is written when an epoch ends: one host sync per
    epoch. gold is the given label for the labeled set and the hidden true label for the unlabeled set
    (the weak view's raw logits), so for the unlabeled set allenai's tools map how the model learns
    the *truth*, not our pseudo-label map. Written under cartography/allenai/<set>/, apart from our
    own td_metrics.jsonl, which allenai's filtering script would otherwise overwrite.
    """

    def __init__(self, folder: Path, ids: list[str], gold: torch.Tensor, batch_size: int, num_classes: int,
                 device: torch.device, start_step: int = 0):
        self.folder, self.ids, self.gold, self.batch_size = folder, ids, gold, batch_size
        self.logits = torch.zeros(len(ids), num_classes, device=device)
        # the first epoch whose every sample this export sees: 0, unless it starts on a resumed run
        # without the logits of the epoch in progress (turned on at the resume; load() sets it back)
        self.first_whole_epoch = -(-start_step * batch_size // len(ids))

    def record(self, step: int, idx: torch.Tensor, logits: torch.Tensor) -> None:
        size = len(self.ids)
        for epoch, start, end in stream_epoch_segments(size, self.batch_size, step - 1):
            self.logits[idx[start:end]] = logits[start:end]
            # at the end of an epoch, unless part of it ran before this export began: its rows would be zeros
            if ((step - 1) * self.batch_size + end) % size == 0 and epoch >= self.first_whole_epoch:
                self._write(epoch)

    def _write(self, epoch: int) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        rows = zip(self.ids, self.logits.cpu().tolist(), self.gold.cpu().tolist())
        lines = "".join(json.dumps({"guid": guid, f"logits_epoch_{epoch}": row, "gold": gold}) + "\n"
                        for guid, row, gold in rows)
        write_text(self.folder / f"dynamics_epoch_{epoch}.jsonl", lines)

    def state(self) -> dict:
        return {"logits": self.logits.cpu()}

    def load(self, state: dict) -> None:
        self.logits.copy_(state["logits"])
        self.first_whole_epoch = 0


class CartographyHook(Hook):
    name = "cartography"
    Options = CartographyOptions

    def __init__(self, options: CartographyOptions):
        super().__init__(options)
        self._pending_state: dict | None = None
        self._written_step = -1
        self._metrics: dict[str, dict] = {}

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
            add_map("unlabeled", context.unlabeled_ids, context.unlabeled_labels, context.unlabeled_batch_size, True)
            if context.debiased:
                add_map("unlabeled_before_debiasing", context.unlabeled_ids, context.unlabeled_labels,
                        context.unlabeled_batch_size, True)
        if opts.export_allenai:
            for name, ids, gold, batch in (("labeled", context.labeled_ids, context.labeled_labels, context.batch_size),
                                           ("unlabeled", context.unlabeled_ids, context.unlabeled_labels,
                                            context.unlabeled_batch_size)):
                if name in self.maps:
                    self.exports[name] = _AllenaiExport(folder / "allenai" / name / "training_dynamics", ids, gold, batch,
                                                        context.num_classes, context.device, context.start_step)
        if self._pending_state is not None:
            for name, state in self._pending_state["maps"].items():
                if name in self.maps:
                    self.maps[name].load(state)
            for name, state in self._pending_state["exports"].items():
                if name in self.exports:
                    self.exports[name].load(state)
            self._pending_state = None
        for name, export in self.exports.items():
            if export.first_whole_epoch > 0:
                print(f"debiaspl: hooks cartography export_allenai, turned on at step {context.start_step}: "
                      f"{name} files from epoch {export.first_whole_epoch} on, the first it sees whole "
                      f"(allenai's tools read from epoch 0: turn it on from the start)", file=sys.stderr)

    def on_step_end(self, record: StepRecord) -> None:
        self.step = record.step
        if "labeled" in self.maps:
            self.maps["labeled"].record(record.step, record.idx_lb, record.probs_lb, record.y_lb,
                                        record.probs_lb.argmax(dim=1) == record.y_lb)
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
        # A pause writes the files but adds no TensorBoard points an uninterrupted run would not have.
        finished = step == self.context.total_steps
        self.write_outputs(step, to_tensorboard=finished)
        if finished and self.options.gallery_size:
            self.write_galleries(step)

    def write_galleries(self, step: int) -> None:
        """The images most typical of each region of each map, with label, pseudo-label and the region's measure
        (from the metrics write_outputs computed at this step)."""
        context = self.context
        for name, dynamics in self.maps.items():
            complete = dynamics.epochs_complete(step)
            images = context.labeled_images if name == "labeled" else context.unlabeled_images
            if name not in self._metrics or images is None:
                continue
            metrics = self._metrics[name]
            pseudo = dynamics.last_label.cpu() if dynamics.last_label is not None else None
            rows = []
            for region, measure in (("easy-to-learn", "confidence"), ("ambiguous", "variability"),
                                    ("hard-to-learn", "confidence")):
                order = top_k(region, metrics, self.options.gallery_size, in_region=True)
                order = [int(i) for i in order if metrics["epochs_observed"][int(i)] > 0]
                rows.append(GalleryRow(region, entries_from(images, order, dynamics.ids, context.class_names,
                                                            labels=dynamics.labels.cpu(), pseudo_labels=pseudo,
                                                            scores=metrics[measure], score_name=measure,
                                                            pseudo_name="raw argmax" if "before" in name else "pseudo")))
            what = ("given labels" if name == "labeled" else
                    "label: hidden truth; the last raw weak-view argmax" if "before" in name else
                    "label: hidden truth; pseudo: the last pseudo-label")
            figure = write_gallery(context.run_dir / "cartography" / name / "gallery", rows,
                                   f"{name}: the samples most typical of each region after {complete} epochs ({what})")
            context.log.figure(f"cartography/{name}/gallery", figure, step)

    def write_outputs(self, step: int, to_tensorboard: bool = True) -> None:
        """Data maps (PNG, and TensorBoard), td_metrics.jsonl, top-k CSVs and region shares of every map.

        Over complete epochs only, so every sample has the same number of observations.
        """
        if step == self._written_step:
            return
        self._written_step = step
        self._metrics = {}  # of this step, per map: write_galleries reuses them
        log, scalars = self.context.log, {}
        for name, dynamics in self.maps.items():
            complete = dynamics.epochs_complete(step)
            if complete == 0:
                continue
            # to the host first: the float copy of an N x E map can be large
            metrics = training_dynamics_metrics(dynamics.target_prob[:, :complete].cpu().float(),
                                                dynamics.correct[:, :complete].cpu())
            self._metrics[name] = metrics
            folder = self.context.run_dir / "cartography" / name
            target, right, truth = _MAP_MEANINGS[name]
            figures = {"data_map": data_map_figure(
                           metrics["confidence"], metrics["variability"], metrics["correctness"],
                           f"{name} data map, {complete} epochs (step {step}); target: {target}",
                           correctness_label=f"correctness: fraction of epochs {right}"),
                       "data_map_by_class": data_map_by_class_figure(
                           metrics["confidence"], metrics["variability"], dynamics.labels.cpu(),
                           self.context.class_names,
                           f"{name}: data map and regions per class ({truth}), {complete} epochs (step {step})")}
            for kind, figure in figures.items():
                if to_tensorboard:
                    log.figure(f"cartography/{name}/{kind}", figure, step, folder / f"{kind}.png")
                else:
                    save_figure(figure, folder / f"{kind}.png")
            records = td_metrics_records(dynamics.ids, metrics)
            write_text(folder / "td_metrics.jsonl", "".join(json.dumps(r) + "\n" for r in records))
            changes = dynamics.changes.cpu() if dynamics.changes is not None else None
            for region in ("ambiguous", "hard-to-learn"):
                order = top_k(region, metrics, self.options.top_k)  # allenai's rankings, by the metric alone
                write_csv(folder / f"{region.replace('-', '_')}.csv", self._top_k_columns(dynamics, metrics, order, changes))
            regions = region_of(metrics["confidence"], metrics["variability"])
            observed = [r for r, n in zip(regions, metrics["epochs_observed"]) if n > 0]
            for region in ("easy-to-learn", "ambiguous", "hard-to-learn"):
                share = sum(r == region for r in observed) / max(len(observed), 1)
                scalars[f"cartography/{name}/share_{region.replace('-', '_')}"] = share
            if changes is not None:
                scalars[f"cartography/{name}/pseudo_label_changes_mean"] = float(changes.float().mean())
        if to_tensorboard and scalars:
            log.scalars(step, scalars)

    def _top_k_columns(self, dynamics: _Map, metrics: dict, order, changes: torch.Tensor | None) -> dict[str, list]:
        order = [int(index) for index in order]
        labels = dynamics.labels.cpu()
        columns = {
            "rank": list(range(1, len(order) + 1)),
            "sample_id": [dynamics.ids[i] for i in order],
            "hidden_label" if changes is not None else "label": [self.context.class_names[int(labels[i])] for i in order],
            **{key: [float(metrics[key][i]) for i in order] for key in ("confidence", "variability", "correctness")},
            "forgetfulness": [int(metrics["forgetfulness"][i]) for i in order],
        }
        if changes is not None:
            columns["pseudo_label_changes"] = [int(changes[i]) for i in order]
        return columns

    def on_save_checkpoint(self) -> dict:
        return {"maps": {name: m.state(self.step) for name, m in self.maps.items()},
                "exports": {name: e.state() for name, e in self.exports.items()}}

    def on_load_checkpoint(self, state: dict) -> None:
        self._pending_state = state  # the arrays are allocated once the run's sizes are known
