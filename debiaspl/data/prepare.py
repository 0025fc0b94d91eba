"""From a `data:` config section to the three image sets a run trains and evaluates on.

Draws the long-tailed labeled and unlabeled sets from the source's train pool; the unlabeled set
keeps its true labels for monitoring only (the trainer never trains on them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from debiaspl.config import DataConfig
from debiaspl.data.datasets import ImageSet, load_source
from debiaspl.data.long_tail import long_tail_counts, split_labeled_unlabeled
from debiaspl.errors import UserError


@dataclass(frozen=True)
class TrainingData:
    labeled: ImageSet
    unlabeled: ImageSet          # labels are hidden ground truth, for monitoring only
    test: ImageSet
    class_names: list[str]
    labeled_counts: list[int]    # [C]
    unlabeled_counts: list[int]  # [C]
    mean: tuple[float, ...]      # per channel, of the labeled + unlabeled images, in [0, 1] units
    std: tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.labeled.images.shape[1:])

    def summary(self) -> dict:
        """What a run folder records about its data (run_info.json)."""
        return {"class_names": self.class_names, "labeled_counts": self.labeled_counts,
                "unlabeled_counts": self.unlabeled_counts, "num_labeled": sum(self.labeled_counts),
                "num_unlabeled": sum(self.unlabeled_counts), "num_test": len(self.test.labels),
                "image_shape": list(self.image_shape), "mean": list(self.mean), "std": list(self.std)}


def prepare_data(config: DataConfig) -> TrainingData:
    source = load_source(config.dataset, config.root, config.download)
    num_classes = len(source.class_names)
    labeled_counts = long_tail_counts(config.num_labeled_head, config.labeled_imbalance, num_classes)
    unlabeled_counts = (None if config.num_unlabeled_head == 0 else
                        long_tail_counts(config.num_unlabeled_head, config.unlabeled_imbalance, num_classes))
    pool_labels = source.train.labels.numpy()
    try:
        idx_lb, idx_ulb = split_labeled_unlabeled(pool_labels, labeled_counts, unlabeled_counts, config.split_seed)
    except ValueError as exc:
        available = np.bincount(pool_labels, minlength=num_classes)
        raise UserError(f"data.num_labeled_head={config.num_labeled_head} / data.num_unlabeled_head="
                        f"{config.num_unlabeled_head} ask for more images than {config.dataset} has: {exc} "
                        f"(train images per class: {available.tolist()})") from None
    labeled, unlabeled = source.train.subset(idx_lb), source.train.subset(idx_ulb)
    mean, std = _channel_stats(torch.cat([labeled.images, unlabeled.images]))
    return TrainingData(labeled, unlabeled, source.test, source.class_names, labeled_counts,
                        np.bincount(unlabeled.labels.numpy(), minlength=num_classes).tolist(), mean, std)


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    pixels = images.transpose(0, 1).reshape(images.shape[1], -1).double() / 255.0
    return tuple(pixels.mean(1).tolist()), tuple(pixels.std(1).clamp_min(1e-3).tolist())
