"""Entropy-based uncertainty and calibration of the pseudo-labels, before and after debiasing.

Normalized entropy H(p) / log C of the weak-view distribution: histograms (all, confident, not
confident), mean per pseudo-label class, how well it separates wrong from right pseudo-labels
(AUROC against the hidden labels), and the calibration of the pseudo-labels' confidence (ECE,
Guo et al. 2017, with a reliability diagram). Everything is binned on the device every step and
logged every `interval` steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from debiaspl.metrics.gallery import GalleryRow, entries_from, write_gallery
from debiaspl.metrics.plots import reliability_diagram_figure
from debiaspl.metrics.uncertainty import (auroc_from_histograms, calibration_update, expected_calibration_error,
                                           histogram_update, normalized_entropy)
from debiaspl.options import option
from debiaspl.hooks.base import IntervalHook, RunContext, StepRecord

# The AUROC bins log10(entropy) over [-12, 0]: late in training most entropies are tiny, and linear
# bins would lump them into one bin of ties. It differs from the exact AUROC only by ties within a bin.
_AUROC_BINS, _LOG_ENTROPY_FLOOR = 1000, -12.0


@dataclass(frozen=True)
class UncertaintyOptions:
    interval: int = option(500, "log the statistics of the last `interval` steps every this many steps", ge=1)
    histogram_bins: int = option(20, "bins of the entropy histograms over [0, 1]", ge=2)
    calibration_bins: int = option(15, "confidence bins of the ECE and the reliability diagram", ge=2)
    figure_interval: int = option(2500, "draw the reliability diagrams every this many steps (and at the end)", ge=1)
    gallery_size: int = option(10, "images per row of the end-of-training gallery: the most uncertain pseudo-labels, and the most confident wrong ones (0: none)", ge=0)


class UncertaintyHook(IntervalHook):
    name = "uncertainty"
    Options = UncertaintyOptions

    def __init__(self, options: UncertaintyOptions):
        super().__init__(options)
        self.latest: dict[str, torch.Tensor] = {}  # per unlabeled sample, at its last training step

    def on_train_start(self, context: RunContext) -> None:
        # Without debiasing the two distributions are the same: watch one.
        self.views = ("before_debiasing", "after_debiasing") if context.debiased else ("pseudo_labels",)
        super().on_train_start(context)
        size = len(context.unlabeled_ids)
        self.latest = ({key: value.to(context.device) for key, value in self.latest.items()} if self.latest else
                       {"entropy": torch.full((size,), float("nan"), device=context.device),
                        "pseudo_label": torch.full((size,), -1, dtype=torch.long, device=context.device)})
        context.log.custom_scalars({"uncertainty": {
            f"mean entropy per pseudo-label class ({view})": ["Multiline", [rf"uncertainty/{view}/entropy_by_class/.*"]]
            for view in self.views}})

    def empty_sums(self) -> dict[str, dict[str, torch.Tensor]]:
        device, bins, classes = self.context.device, self.options.histogram_bins, self.context.num_classes
        zeros = lambda size, dtype=torch.long: torch.zeros(size, dtype=dtype, device=device)  # noqa: E731
        calibration = self.options.calibration_bins
        return {view: {"all": zeros(bins), "masked": zeros(bins), "unmasked": zeros(bins),
                       "right": zeros(_AUROC_BINS), "wrong": zeros(_AUROC_BINS),
                       "class_sum": zeros(classes, torch.float64), "class_count": zeros(classes),
                       "masked_sum": zeros(2, torch.float64), "masked_count": zeros(2),
                       "cal_count": zeros(calibration), "cal_confidence": zeros(calibration, torch.float64),
                       "cal_correct": zeros(calibration, torch.float64)}
                for view in self.views}

    def accumulate(self, sums: dict[str, dict[str, torch.Tensor]], record: StepRecord) -> None:
        for view in self.views:
            probs = record.probs_weak if view == "before_debiasing" else record.probs_pseudo
            entropy = self._accumulate_view(sums[view], probs, record)
            if view != "before_debiasing":  # the view pseudo-labels come from: kept per sample for the gallery
                self.latest["entropy"][record.idx_ulb] = entropy.float()
                self.latest["pseudo_label"][record.idx_ulb] = record.pseudo_labels

    @staticmethod
    def _accumulate_view(sums: dict[str, torch.Tensor], probs: torch.Tensor, record: StepRecord) -> torch.Tensor:
        """Add one step's view to its sums; returns its normalized entropy [N]."""
        entropy = normalized_entropy(probs)
        confidence, labels = probs.max(dim=1)
        correct = labels == record.y_ulb
        masked = record.mask.bool()  # the training mask (from the debiased view) for both views
        histogram_update(sums["all"], entropy)
        histogram_update(sums["masked"], entropy, where=masked)
        histogram_update(sums["unmasked"], entropy, where=~masked)
        log_entropy = entropy.clamp_min(10 ** _LOG_ENTROPY_FLOOR).log10()
        histogram_update(sums["right"], log_entropy, _LOG_ENTROPY_FLOOR, 0.0, where=correct)
        histogram_update(sums["wrong"], log_entropy, _LOG_ENTROPY_FLOOR, 0.0, where=~correct)
        sums["class_sum"].index_add_(0, labels, entropy.double())
        sums["class_count"].index_add_(0, labels, torch.ones_like(labels))
        sums["masked_sum"].index_add_(0, masked.long(), entropy.double())
        sums["masked_count"].index_add_(0, masked.long(), torch.ones_like(labels))
        calibration_update(sums["cal_count"], sums["cal_confidence"], sums["cal_correct"], confidence, correct.double())
        return entropy

    def log_interval(self, step: int, sums: dict[str, dict[str, torch.Tensor]], record: StepRecord):
        if int(sums[self.views[0]]["all"].sum()) == 0:
            return None
        log, scalars = self.context.log, {}
        edges = torch.linspace(0, 1, self.options.histogram_bins + 1).tolist()
        for view, s in sums.items():
            prefix = f"uncertainty/{view}"
            total = s["class_count"].sum().clamp_min(1)
            scalars[f"{prefix}/entropy_mean"] = float(s["class_sum"].sum() / total)
            unmasked, masked = (s["masked_sum"] / s["masked_count"].clamp_min(1)).tolist()
            scalars[f"{prefix}/entropy_masked"] = masked if s["masked_count"][1] else float("nan")
            scalars[f"{prefix}/entropy_unmasked"] = unmasked if s["masked_count"][0] else float("nan")
            scalars[f"{prefix}/auroc_entropy_wrong"] = auroc_from_histograms(s["wrong"], s["right"])
            scalars[f"{prefix}/ece"] = expected_calibration_error(s["cal_count"], s["cal_confidence"], s["cal_correct"])
            by_class = s["class_sum"] / s["class_count"].clamp_min(1)
            for name, value, count in zip(self.context.class_names, by_class.tolist(), s["class_count"].tolist()):
                scalars[f"{prefix}/entropy_by_class/{name}"] = value if count else float("nan")
            for part in ("all", "masked", "unmasked"):
                log.histogram(f"{prefix}/entropy_{part}", s[part].tolist(), edges, step)
        log.scalars(step, scalars)
        return sums

    def draw_figures(self, step: int, sums) -> None:
        """A reliability diagram per view, as TensorBoard images and PNGs."""
        for view, s in sums.items():
            figure = reliability_diagram_figure(s["cal_count"], s["cal_confidence"], s["cal_correct"],
                                                f"pseudo-label calibration ({view.replace('_', ' ')}), step {step}")
            self.context.log.figure(f"uncertainty/{view}/reliability", figure, step,
                                    self.context.run_dir / "uncertainty" / f"reliability_{view}.png")

    def on_train_end(self, step: int) -> None:
        super().on_train_end(step)
        context = self.context
        if step != context.total_steps or not self.options.gallery_size or context.unlabeled_images is None:
            return
        entropy, pseudo = self.latest["entropy"].cpu(), self.latest["pseudo_label"].cpu()
        truth, seen = context.unlabeled_labels.cpu(), pseudo >= 0
        k = self.options.gallery_size
        uncertain = torch.argsort(torch.where(seen, entropy, -1.0), descending=True, stable=True)[:min(k, int(seen.sum()))]
        wrong = seen & (pseudo != truth)
        confident_wrong = torch.argsort(torch.where(wrong, entropy, 2.0), stable=True)[:min(k, int(wrong.sum()))]
        view = "debiased " if context.debiased else ""
        rows = [GalleryRow("most uncertain pseudo-labels", entries_from(
                    context.unlabeled_images, uncertain, context.unlabeled_ids, context.class_names, labels=truth,
                    pseudo_labels=pseudo, scores=entropy, score_name="entropy")),
                GalleryRow("most confident wrong pseudo-labels", entries_from(
                    context.unlabeled_images, confident_wrong, context.unlabeled_ids, context.class_names, labels=truth,
                    pseudo_labels=pseudo, scores=entropy, score_name="entropy"))]
        figure = write_gallery(context.run_dir / "uncertainty" / "gallery", rows,
                               f"unlabeled images at their last training step: normalized entropy of the {view}weak view "
                               f"(label: hidden truth; pseudo: the pseudo-label)")
        context.log.figure("uncertainty/gallery", figure, step)

    def on_save_checkpoint(self) -> dict:
        return {**super().on_save_checkpoint(), "latest": {key: value.cpu() for key, value in self.latest.items()}}

    def on_load_checkpoint(self, state: dict) -> None:
        super().on_load_checkpoint(state)
        self.latest = dict(state.get("latest", {}))  # absent in checkpoints of older versions
