"""TracIn self-influence of the labeled samples accumulated during training (Pruthi et al. 2020), at almost no cost.

Every `every` steps, each labeled sample in the batch adds lr * ||p - onehot(y)||^2 * (||h||^2 + 1),
the exact squared norm of its last-layer gradient, from the forward pass the step already made.
Unlike `debiaspl influence` over snapshots, this uses the augmented training view and BatchNorm
in training mode, and needs no extra checkpoints. Written at the end (and every
`write_interval` steps) to influence/self_influence_online.csv, ranked by the mean contribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from debiaspl.metrics.gallery import entries_from, split_rows, write_gallery
from debiaspl.metrics.influence import last_layer_self_influence
from debiaspl.files import write_csv
from debiaspl.options import option
from debiaspl.hooks.base import Hook, RunContext, StepRecord


@dataclass(frozen=True)
class InfluenceOptions:
    every: int = option(1, "add the labeled batch's contribution every this many steps", ge=1)
    write_interval: int = option(5000, "write the ranking every this many steps (and at the end)", ge=1)
    gallery_size: int = option(16, "images of the most self-influential labeled samples in the gallery drawn at the end of training (0: none)", ge=0)


class InfluenceHook(Hook):
    name = "influence"
    Options = InfluenceOptions
    needs_features = True

    def __init__(self, options: InfluenceOptions):
        super().__init__(options)
        self.state: dict[str, torch.Tensor] = {}

    def on_train_start(self, context: RunContext) -> None:
        self.context = context
        size = len(context.labeled_ids)
        if self.state:
            self.state = {key: value.to(context.device) for key, value in self.state.items()}
        else:
            self.state = {"total": torch.zeros(size, dtype=torch.float64, device=context.device),
                          "count": torch.zeros(size, dtype=torch.long, device=context.device)}

    def on_step_end(self, record: StepRecord) -> None:
        if record.step % self.options.every == 0:
            influence = last_layer_self_influence(record.probs_lb, record.y_lb, record.features_lb, record.lr)
            self.state["total"].index_add_(0, record.idx_lb, influence.to(torch.float64))
            self.state["count"].index_add_(0, record.idx_lb, torch.ones_like(record.idx_lb))
        if record.step % self.options.write_interval == 0:
            self.write(record.step)

    def on_train_end(self, step: int) -> None:
        self.write(step)
        context = self.context
        if step == context.total_steps and self.options.gallery_size and context.labeled_images is not None:
            mean = self.state["total"].cpu() / self.state["count"].cpu().clamp_min(1)
            order = torch.argsort(mean, descending=True, stable=True)[:self.options.gallery_size]
            rows = split_rows(entries_from(context.labeled_images, order, context.labeled_ids, context.class_names,
                                           labels=context.labeled_labels.cpu(), scores=mean, score_name="self-influence"),
                              per_row=8)
            figure = write_gallery(context.run_dir / "influence" / "self_influence_online_gallery", rows,
                                   "most self-influential labeled images during training (suspected mislabels or rare ones)")
            context.log.figure("influence/self_influence_gallery", figure, step)

    def write(self, step: int) -> None:
        """The ranking by mean contribution per observation (samples are seen unequally often when every > 1)."""
        total, count = self.state["total"].cpu(), self.state["count"].cpu()
        mean = total / count.clamp_min(1)
        order = torch.argsort(mean, descending=True, stable=True)
        labels = self.context.labeled_labels.cpu()
        write_csv(self.context.run_dir / "influence" / "self_influence_online.csv", {
            "rank": list(range(1, len(order) + 1)),
            "sample_id": [self.context.labeled_ids[i] for i in order],
            "label": [self.context.class_names[int(labels[i])] for i in order],
            "mean": mean[order].tolist(), "sum": total[order].tolist(), "observations": count[order].tolist(),
        })

    def on_save_checkpoint(self) -> dict:
        return {key: value.cpu() for key, value in self.state.items()}

    def on_load_checkpoint(self, state: dict) -> None:
        self.state = dict(state)
