"""Training batches as a pure function of (seed, step), and their conversion to model inputs.

Every step's sample indices and augmentation draws are derived from the run seed and the step
number alone: labeled and unlabeled streams walk a fresh seeded permutation per epoch of their own
set. A resumed run therefore needs only the step to continue bit-for-bit, and background workers
can produce steps in any order without sharing random state.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Iterator, TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from debiaspl.data.augment import StrongAugment, strong_augment, weak_augment
from debiaspl.data.datasets import ImageSet

_LABELED_STREAM, _UNLABELED_STREAM, _AUGMENT_STREAM = 1, 2, 3
_Batch = TypeVar("_Batch", bound="_Tensors")


class _Tensors:
    """Batch fields are all tensors: map a function over them (copy to a device, shard, pin)."""

    def map(self: _Batch, function: Callable[[torch.Tensor], torch.Tensor]) -> _Batch:
        return type(self)(**{f.name: function(getattr(self, f.name)) for f in dataclasses.fields(self)})

    def pin_memory(self: _Batch) -> _Batch:
        """Called by DataLoader(pin_memory=True) on each item."""
        return self.map(torch.Tensor.pin_memory)


@dataclass(frozen=True)
class UnaugmentedBatch(_Tensors):
    """One step's images before augmentation (y_ulb is the hidden truth, for monitoring only)."""

    x_lb: torch.Tensor     # [B, C, H, W] uint8
    y_lb: torch.Tensor     # [B] int64
    idx_lb: torch.Tensor   # [B] indices into the labeled set
    x_ulb: torch.Tensor    # [mu*B, C, H, W] uint8
    y_ulb: torch.Tensor    # [mu*B]
    idx_ulb: torch.Tensor  # [mu*B] indices into the unlabeled set


@dataclass(frozen=True)
class TrainBatch(_Tensors):
    """One step's augmented views: the weak labeled view, and a weak and a strong unlabeled view."""

    x_lb: torch.Tensor          # [B, C, H, W] uint8, weak view
    y_lb: torch.Tensor          # [B]
    idx_lb: torch.Tensor        # [B]
    x_ulb_weak: torch.Tensor    # [mu*B, C, H, W] uint8
    x_ulb_strong: torch.Tensor  # [mu*B, C, H, W] uint8
    y_ulb: torch.Tensor         # [mu*B] hidden truth, for monitoring only
    idx_ulb: torch.Tensor       # [mu*B]


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that mixes all parts (no collisions like seed + step would have)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def stream_indices(set_size: int, batch_size: int, step: int, seed: int, stream: int) -> torch.Tensor:
    """Indices [batch_size] of `step`'s batch from an infinite stream of per-epoch permutations."""
    start = step * batch_size
    first_epoch, last_epoch = start // set_size, (start + batch_size - 1) // set_size
    perms = [torch.randperm(set_size, generator=torch.Generator().manual_seed(derive_seed(seed, stream, epoch)))
             for epoch in range(first_epoch, last_epoch + 1)]
    offset = start - first_epoch * set_size
    return torch.cat(perms)[offset:offset + batch_size]


def stream_epoch_segments(set_size: int, batch_size: int, step: int) -> list[tuple[int, int, int]]:
    """(epoch, start, end): the runs of `step`'s batch positions [start, end) lying in one epoch, in order.

    Each epoch is one permutation of the set, so within a run every sample appears at most once; a
    batch that crosses an epoch boundary can hold a sample twice, once in each run. Per-epoch
    training dynamics (dataset cartography) rely on this. Host arithmetic only.
    """
    segments, first = [], step * batch_size
    position = 0
    while position < batch_size:
        epoch = (first + position) // set_size
        end = min(batch_size, (epoch + 1) * set_size - first)
        segments.append((epoch, position, end))
        position = end
    return segments


def gather_batch(labeled: ImageSet, unlabeled: ImageSet, step: int, *, batch_size: int,
                 unlabeled_ratio: int, seed: int) -> UnaugmentedBatch:
    """The un-augmented images and labels of one step."""
    idx_lb = stream_indices(len(labeled.labels), batch_size, step, seed, _LABELED_STREAM)
    idx_ulb = stream_indices(len(unlabeled.labels), batch_size * unlabeled_ratio, step, seed, _UNLABELED_STREAM)
    return UnaugmentedBatch(labeled.images[idx_lb], labeled.labels[idx_lb], idx_lb, unlabeled.images[idx_ulb],
                            unlabeled.labels[idx_ulb], idx_ulb)


def augment_batch(batch: UnaugmentedBatch, step: int, seed: int, strong: StrongAugment | str) -> TrainBatch:
    """Weak view of x_lb; weak and strong views of x_ulb.

    Works wherever the images are (a loader worker's CPU or the training GPU) and gives the same
    result on either: the random parameters come from a CPU generator seeded by (seed, step).
    """
    generator = torch.Generator().manual_seed(derive_seed(seed, _AUGMENT_STREAM, step))
    crop = strong.weak_crop if isinstance(strong, StrongAugment) else "pad_crop"
    x_lb = weak_augment(batch.x_lb, generator, crop)
    x_ulb_weak = weak_augment(batch.x_ulb, generator, crop)
    x_ulb_strong = strong_augment(batch.x_ulb, generator, strong)
    return TrainBatch(x_lb, batch.y_lb, batch.idx_lb, x_ulb_weak, x_ulb_strong, batch.y_ulb, batch.idx_ulb)


def make_train_batch(labeled: ImageSet, unlabeled: ImageSet, step: int, *, batch_size: int,
                     unlabeled_ratio: int, seed: int, strong: StrongAugment | str | None) -> UnaugmentedBatch | TrainBatch:
    """gather_batch, then augment_batch unless strong is None (augmentation left to the trainer)."""
    batch = gather_batch(labeled, unlabeled, step, batch_size=batch_size, unlabeled_ratio=unlabeled_ratio, seed=seed)
    return batch if strong is None else augment_batch(batch, step, seed, strong)


class TrainBatches(IterableDataset):
    """(step, batch) for steps [start_step, end_step); worker w of W makes the steps with step % W == w.

    DataLoader takes one item from each worker in turn, so steps still arrive in order.
    """

    def __init__(self, labeled: ImageSet, unlabeled: ImageSet, start_step: int, end_step: int, **batch_options):
        self.labeled, self.unlabeled = labeled, unlabeled
        self.start_step, self.end_step = start_step, end_step
        self.batch_options = batch_options

    def __iter__(self) -> Iterator[tuple[int, UnaugmentedBatch | TrainBatch]]:
        worker = get_worker_info()
        worker_id, num_workers = (0, 1) if worker is None else (worker.id, worker.num_workers)
        for step in range(self.start_step + worker_id, self.end_step, num_workers):
            yield step, make_train_batch(self.labeled, self.unlabeled, step, **self.batch_options)


def train_loader(labeled: ImageSet, unlabeled: ImageSet, *, start_step: int, end_step: int, num_workers: int,
                 pin_memory: bool, **batch_options) -> DataLoader:
    batches = TrainBatches(labeled, unlabeled, start_step, end_step, **batch_options)
    # A private generator: by default DataLoader draws its worker seed from the global torch RNG,
    # which would shift dropout masks between a fresh and a resumed run. Batches use no worker seed.
    return DataLoader(batches, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                      prefetch_factor=4 if num_workers else None, generator=torch.Generator().manual_seed(0))


def to_model_input(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 [N, C, H, W] -> normalized float32 on the same device; mean, std: [C] in [0, 1] units."""
    return (images.float().div_(255.0) - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
