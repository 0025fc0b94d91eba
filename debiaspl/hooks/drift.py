"""Class-distribution drift of the pseudo-labels: do they favour the head classes, and does DebiasPL pull them back?

Counts pseudo-labels per class on the device every step and, every `interval` steps, logs how far
their distribution is from the true unlabeled distribution and from uniform, per-class precision /
recall / count ratio against the hidden labels, the true share of each class (beside q_hat in one
Custom Scalars chart) and keeps q_hat's history; every `figure_interval` steps it draws q_hat against
the truth (last step and over steps), the pseudo-labels per class and the confusion matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from debiaspl.metrics.distribution import (confusion_update, count_ratio, imbalance_ratio, kl_divergence,
                                            per_class_precision_recall)
from debiaspl.metrics.plots import (class_distribution_figure, class_marginal_history_figure, class_shares_figure,
                                    confusion_matrix_figure)
from debiaspl.options import option
from debiaspl.hooks.base import IntervalHook, RunContext, StepRecord


@dataclass(frozen=True)
class DriftOptions:
    interval: int = option(500, "log the drift statistics of the last `interval` steps every this many steps", ge=1)
    figure_interval: int = option(2500, "draw the q_hat-vs-truth, pseudo-labels-per-class and confusion-matrix figures every this many steps (and at the end)", ge=1)


class DriftHook(IntervalHook):
    name = "drift"
    Options = DriftOptions

    def __init__(self, options: DriftOptions):
        super().__init__(options)
        self.marginal_history: list[tuple[int, list[float]]] = []  # (step, q_hat [C]) at every log point

    def on_train_start(self, context: RunContext) -> None:
        super().on_train_start(context)
        truth = torch.tensor(context.unlabeled_counts, dtype=torch.float64)
        self.true_distribution = truth / truth.sum()
        # TensorBoard colours each tag on its own, so the chart's tooltip (tag names) pairs q_hat with the truth
        per_class = {"q_hat and true unlabeled share per class": [r"pseudo/class_marginal/.*", r"drift/true_share/.*"],
                     "pseudo-label share per class": [r"drift/pseudo_share/.*"],
                     "pseudo-label precision per class": [r"drift/precision/.*"],
                     "pseudo-label recall per class": [r"drift/recall/.*"],
                     "#pseudo-labels / #true per class": [r"drift/count_ratio/.*"],
                     "mask rate per pseudo-label class": [r"drift/mask_rate/.*"]}
        context.log.custom_scalars({"drift": {title: ["Multiline", patterns] for title, patterns in per_class.items()}})
        if context.start_step == 0:  # TensorBoard's histograms cannot name their bins
            names = ", ".join(f"{k} = {name}" for k, name in enumerate(context.class_names))
            context.log.text("drift/histogram_bins", f"Bins of the drift/pseudo_labels* histograms: {names}")

    def empty_sums(self) -> dict[str, torch.Tensor]:
        num_classes, device = self.context.num_classes, self.context.device
        zeros = lambda *shape: torch.zeros(*shape, dtype=torch.long, device=device)  # noqa: E731
        return {"confusion": zeros(num_classes, num_classes), "masked": zeros(num_classes),
                "raw": zeros(num_classes), "changed": zeros(())}

    def accumulate(self, sums: dict[str, torch.Tensor], record: StepRecord) -> None:
        confusion_update(sums["confusion"], record.y_ulb, record.pseudo_labels)
        sums["masked"].index_add_(0, record.pseudo_labels, record.mask.long())
        raw_labels = record.probs_weak.argmax(dim=1)
        sums["raw"].index_add_(0, raw_labels, torch.ones_like(raw_labels))
        sums["changed"] += (raw_labels != record.pseudo_labels).sum()

    def log_interval(self, step: int, sums: dict[str, torch.Tensor], record: StepRecord):
        marginal = record.class_marginal.double().cpu()
        self.marginal_history.append((step, marginal.tolist()))
        confusion = sums["confusion"]
        counts = confusion.sum(dim=0)
        total = int(counts.sum())
        if total == 0:
            return None
        uniform = torch.full_like(self.true_distribution, 1.0 / len(self.true_distribution))
        share = counts.double() / total
        precision, recall = per_class_precision_recall(confusion)
        scalars = {
            "drift/kl_to_true": kl_divergence(share, self.true_distribution),
            "drift/kl_to_uniform": kl_divergence(share, uniform),
            "drift/kl_marginal_to_true": kl_divergence(marginal, self.true_distribution),
            "drift/imbalance_ratio": imbalance_ratio(counts),
            "drift/imbalance_ratio_masked": imbalance_ratio(sums["masked"]),
            # where these are non-zero the ratios above divide by 1 for the empty classes (finite, plottable)
            "drift/classes_without_pseudo_labels": int((counts == 0).sum()),
            "drift/classes_without_pseudo_labels_masked": int((sums["masked"] == 0).sum()),
            "drift/debias_changed": int(sums["changed"]) / total,
        }
        per_class = {"pseudo_share": share, "precision": precision, "recall": recall,
                     "count_ratio": count_ratio(confusion),
                     "mask_rate": sums["masked"].double() / counts.clamp_min(1).double(),
                     "true_share": self.true_distribution}
        for group, values in per_class.items():
            for name, value in zip(self.context.class_names, values.tolist()):
                scalars[f"drift/{group}/{name}"] = value
        log = self.context.log
        log.scalars(step, scalars)
        edges = [k - 0.5 for k in range(self.context.num_classes + 1)]
        log.histogram("drift/pseudo_labels", counts.tolist(), edges, step)
        log.histogram("drift/pseudo_labels_masked", sums["masked"].tolist(), edges, step)
        log.histogram("drift/pseudo_labels_before_debiasing", sums["raw"].tolist(), edges, step)
        first = (step - 1) // self.options.interval * self.options.interval + 1
        return {"first_step": first, "marginal": marginal, "confusion": confusion, "raw": sums["raw"],
                "masked": sums["masked"]}

    def draw_figures(self, step: int, logged: dict) -> None:
        """q_hat against the truth (at `step` and over steps), the pseudo-labels per class and the confusion
        matrix of the interval ending at `step`, as TensorBoard images and PNGs in drift/."""
        context, names = self.context, self.context.class_names
        folder = context.run_dir / "drift"
        steps = f"steps {logged['first_step']}-{step}" if "first_step" in logged else f"the interval ending at step {step}"
        figure = class_distribution_figure(names, logged["marginal"], self.true_distribution,
                                           f"q_hat vs true unlabeled distribution, step {step}",
                                           true_label="true unlabeled share")
        context.log.figure("drift/class_marginal_vs_true", figure, step, folder / "class_marginal_vs_true.png")
        history = [(s, values) for s, values in self.marginal_history if s <= step]
        if history:
            figure = class_marginal_history_figure(names, [s for s, _ in history], [v for _, v in history],
                                                   self.true_distribution, f"q_hat per class over steps, up to step {step}")
            context.log.figure("drift/class_marginal_over_steps", figure, step, folder / "class_marginal_over_steps.png")
        if "raw" in logged:  # absent from the last interval of an older checkpoint
            series = {"pseudo-labels" + (" (debiased)" if context.debiased else ""): logged["confusion"].sum(dim=0),
                      "confident pseudo-labels (in the loss)": logged["masked"], "true unlabeled share": self.true_distribution}
            if context.debiased:
                series = {"before debiasing (raw argmax)": logged["raw"], **series}
            figure = class_shares_figure(names, series, f"pseudo-labels per class, {steps}",
                                         ylabel="fraction of the series' samples", reference="true unlabeled share")
            context.log.figure("drift/pseudo_labels_per_class", figure, step, folder / "pseudo_labels_per_class.png")
        figure = confusion_matrix_figure(logged["confusion"], names, f"pseudo-labels vs hidden labels, {steps}",
                                         xlabel="pseudo-label", ylabel="true class (hidden label)")
        context.log.figure("drift/confusion", figure, step, folder / "confusion.png")

    def on_save_checkpoint(self) -> dict:
        return {**super().on_save_checkpoint(), "marginal_history": {
            "steps": [step for step, _ in self.marginal_history], "values": [v for _, v in self.marginal_history]}}

    def on_load_checkpoint(self, state: dict) -> None:
        super().on_load_checkpoint(state)
        history = state.get("marginal_history", {"steps": [], "values": []})  # absent before q_hat's history was kept
        self.marginal_history = list(zip(history["steps"], history["values"]))
        if self._last_interval is not None and len(self._last_interval) == 3:  # format 1: (step, q_hat, confusion)
            step, marginal, confusion = self._last_interval
            self._last_interval = (step, (marginal, confusion))
        if self._last_interval is not None and isinstance(self._last_interval[1], tuple):  # format 2: (q_hat, confusion)
            step, (marginal, confusion) = self._last_interval
            self._last_interval = (step, {"marginal": marginal, "confusion": confusion})
