"""From a `data:` config section to the three image sets a run trains and evaluates on.

Draws the long-tailed labeled and unlabeled sets from the source's train pool; the unlabeled set
keeps its true labels for monitoring only (the trainer never trains on them).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from debiaspl.config import DataConfig
from debiaspl.data.augment import StrongAugment
from debiaspl.data.datasets import FolderOptions, ImageSet, load_source
from debiaspl.data.decoded_cache import remembered_channel_stats
from debiaspl.data.long_tail import long_tail_counts, split_labeled_unlabeled
from debiaspl.data.teacher import TeacherPredictions, read_teacher_logits
from debiaspl.errors import UserError
from debiaspl.metrics.distribution import kl_divergence


@dataclass(frozen=True)
class TrainingData:
    labeled: ImageSet
    unlabeled: ImageSet          # labels are hidden ground truth, for monitoring only
    test: ImageSet
    class_names: list[str]
    labeled_counts: list[int]    # [C] of the training labels (the long-tailed draw, plus any data.label_file)
    unlabeled_counts: list[int]  # [C]
    mean: tuple[float, ...]      # per channel, in [0, 1] units (data.normalization)
    std: tuple[float, ...]
    # data.teacher_logits: [N_unlabeled] the teacher's label of each unlabeled image, -1 where it
    # may not fill in; and what the teacher scored on the images, the baseline a student should beat
    unlabeled_teacher_labels: torch.Tensor | None = None
    teacher_summary: dict | None = None
    storage: str = "memory"      # how the pixels are held: memory, cache (memory-mapped) or stream (data.storage)

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
                "image_shape": list(self.image_shape), "storage": self.storage,
                "mean": list(self.mean), "std": list(self.std),
                **({"teacher": self.teacher_summary} if self.teacher_summary else {})}


def prepare_data(config: DataConfig) -> TrainingData:
    source = load_source(config.dataset, config.root, config.download,
                         FolderOptions(config.image_size, config.storage, config.cache_dir))
    num_classes = len(source.class_names)
    labeled_counts = long_tail_counts(config.num_labeled_head, config.labeled_imbalance, num_classes)
    unlabeled_counts = unlabeled_class_counts(config, num_classes)
    pool_labels = source.train.labels.numpy()
    labeled_labels = teacher_labels = teacher_summary = None
    if config.teacher_logits:
        teacher = read_teacher_logits(Path(config.teacher_logits), source.train.sample_ids, source.class_names)
        idx_lb, idx_ulb = teacher.split(config.teacher_threshold)
        if len(idx_lb) == 0 or len(idx_ulb) == 0:
            raise UserError(f"data.teacher_threshold = {config.teacher_threshold}: {len(idx_lb)} of the "
                            f"{len(pool_labels)} train images reach it, leaving no "
                            f"{'labeled' if len(idx_lb) == 0 else 'unlabeled'} set (teacher confidence "
                            f"ranges {teacher.confidence.min():.3f}..{teacher.confidence.max():.3f})")
        labeled_labels = teacher.labels[torch.as_tensor(idx_lb)].numpy()
        teacher_labels = teacher.fill_in_labels(idx_ulb, config.teacher_fill_threshold)
        teacher_summary = summarize_teacher(teacher, pool_labels, idx_lb, idx_ulb, num_classes,
                                            config.teacher_fill_threshold)
    else:
        try:
            idx_lb, idx_ulb = split_labeled_unlabeled(pool_labels, labeled_counts, unlabeled_counts, config.split_seed)
        except ValueError as exc:
            available = np.bincount(pool_labels, minlength=num_classes)
            raise UserError(f"data.num_labeled_head={config.num_labeled_head} / data.num_unlabeled_head="
                            f"{config.num_unlabeled_head} ask for more images than {config.dataset} has: {exc} "
                            f"(train images per class: {available.tolist()})") from None
    if config.label_file:
        idx_lb, idx_ulb, labeled_labels = apply_label_file(Path(config.label_file), source.train.sample_ids,
                                                           source.class_names, idx_lb, idx_ulb, pool_labels)
    labeled, unlabeled = source.train.subset(idx_lb), source.train.subset(idx_ulb)
    if labeled_labels is not None:
        labeled = ImageSet(labeled.images, torch.as_tensor(labeled_labels, dtype=torch.long), labeled.sample_ids)
    mean, std = normalization_stats(config.normalization, [labeled, unlabeled])
    return TrainingData(labeled, unlabeled, source.test, source.class_names,
                        np.bincount(labeled.labels.numpy(), minlength=num_classes).tolist(),
                        np.bincount(unlabeled.labels.numpy(), minlength=num_classes).tolist(), mean, std,
                        teacher_labels, teacher_summary, config.storage if config.dataset == "imagefolder" else "memory")


def summarize_teacher(teacher: TeacherPredictions, pool_labels: np.ndarray, idx_lb: np.ndarray, idx_ulb: np.ndarray,
                      num_classes: int, fill_threshold: float) -> dict:
    """How good the teacher's labels are (against the pool's true labels): the numbers a student should beat."""
    truth = torch.as_tensor(pool_labels)
    lb, ulb = torch.as_tensor(idx_lb), torch.as_tensor(idx_ulb)
    predicted, true_ulb = teacher.labels[ulb], truth[ulb]
    return {"labeled_accuracy": (teacher.labels[lb] == truth[lb]).double().mean().item(),
            "unlabeled_accuracy": (predicted == true_ulb).double().mean().item(),
            "unlabeled_kl_to_true": kl_divergence(torch.bincount(predicted, minlength=num_classes),
                                                  torch.bincount(true_ulb, minlength=num_classes)),
            "fill_in_fraction": (teacher.confidence[ulb] >= fill_threshold).double().mean().item()}


def unlabeled_class_counts(config: DataConfig, num_classes: int) -> list[int] | None:
    """Unlabeled images per class [C] (None: all the pool's images not drawn as labeled).

    M1 = data.num_unlabeled_head is the head class's count, except for a uniform set (gamma_u = 1)
    under uniform_unlabeled_count "total", where it counts all classes together (USB's convention).
    """
    if config.num_unlabeled_head == 0:
        return None
    if config.unlabeled_imbalance == 1 and config.uniform_unlabeled_count == "total":
        return [config.num_unlabeled_head // num_classes] * num_classes  # USB: int(ulb_num_labels / num_classes)
    return long_tail_counts(config.num_unlabeled_head, config.unlabeled_imbalance, num_classes)


def apply_label_file(path: Path, pool_ids: list[str], class_names: list[str], idx_lb: np.ndarray,
                     idx_ulb: np.ndarray, pool_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels given by a CSV (sample_id,label) override or extend the labeled set.

    A listed labeled image takes the file's label (e.g. a planted mislabel); a listed unlabeled or
    unused pool image moves into the labeled set. Returns new labeled indices, unlabeled indices and
    the labeled set's training labels.
    """
    given = read_label_file(path, class_names)
    position = {sample_id: index for index, sample_id in enumerate(pool_ids)}
    unknown = [sample_id for sample_id in given if sample_id not in position]
    if unknown:
        raise UserError(f"data.label_file {path}: {len(unknown)} sample ids are not in the train set, "
                        f"e.g. {unknown[0]!r}")
    chosen = {position[sample_id]: label for sample_id, label in given.items()}
    labels = {int(index): int(pool_labels[index]) for index in idx_lb} | chosen
    new_lb = np.array(list(labels), dtype=np.int64)
    new_ulb = np.array([index for index in idx_ulb if int(index) not in chosen], dtype=np.int64)
    return new_lb, new_ulb, np.array(list(labels.values()), dtype=np.int64)


def read_label_file(path: Path, class_names: list[str]) -> dict[str, int]:
    """sample_id -> class index from a CSV with a header naming `sample_id` and `label` columns."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:  # -sig: spreadsheets often write a BOM
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise UserError(f"data.label_file = {str(path)!r}: cannot read it: {exc.strerror}") from None
    except UnicodeDecodeError as exc:  # e.g. a spreadsheet's Latin-1 or UTF-16 export
        # exc.start counts from the decoder's current chunk, not the file's start: not worth printing
        raise UserError(f"data.label_file {path}: not UTF-8 text ({exc.reason}, {exc.object[exc.start:exc.start + 1]!r}); "
                        f"it must be a UTF-8 CSV: save it again as \"CSV UTF-8\"") from None
    except csv.Error as exc:  # a NUL byte, say: a binary file, or UTF-16 that happened to decode
        raise UserError(f"data.label_file {path}: not a readable CSV ({exc}); it must be a UTF-8 CSV") from None
    if rows and any("\x00" in (key or "") for key in rows[0]):  # UTF-16 without a BOM decodes, NULs and all
        raise UserError(f"data.label_file {path}: holds NUL bytes (UTF-16, or not text); it must be a UTF-8 CSV")
    if rows and not {"sample_id", "label"} <= set(rows[0]):
        raise UserError(f"data.label_file {path}: needs a header with columns sample_id and label")
    index_of = {name: index for index, name in enumerate(class_names)}
    labels, line_of = {}, {}
    for line, row in enumerate(rows, start=2):
        sample_id, text = (row["sample_id"] or "").strip(), (row["label"] or "").strip()
        if sample_id in line_of:
            raise UserError(f"data.label_file {path}: sample {sample_id!r} is listed on lines {line_of[sample_id]} "
                            f"and {line}; keep one")
        line_of[sample_id] = line
        if text in index_of:
            labels[sample_id] = index_of[text]
        elif text.isdecimal() and int(text) < len(class_names):
            labels[sample_id] = int(text)
        else:
            why = "no label" if not text else f"label {text!r} is neither a class name nor an index below {len(class_names)}"
            raise UserError(f"data.label_file {path} line {line}: sample {sample_id!r} has {why}; "
                            f"fill in the label column or delete the row")
    return labels


# Fixed per-channel (mean, std) in [0, 1] units, as the reference codebases hard-code them.
NORMALIZATIONS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),  # kekmodel, DASO, ACR
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),      # USB, for CIFAR too
    "minus_one_one": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),             # TensorFlow FixMatch: x / 127.5 - 1
}
# USB's Cutout fill is CIFAR-10's mean in 0..255, rounded.
CUTOUT_FILLS = {"gray": (127, 127, 127), "cifar_mean": (125, 123, 114)}


def strong_augmentation(config: DataConfig) -> StrongAugment:
    """The strong view `data:` describes."""
    return StrongAugment(variant=config.strong_augment, geometric_fill=config.geometric_fill,
                         cutout_fill=CUTOUT_FILLS[config.cutout_fill], cutout_box=config.cutout_box,
                         weak_crop=config.weak_crop)


def normalization_stats(name: str, sets: list[ImageSet]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel for data.normalization `name`; "data" measures them on the images of `sets`."""
    channels = sets[0].images.shape[1]
    if name == "data":
        return remembered_channel_stats([s.images for s in sets], channel_stats)
    mean, std = NORMALIZATIONS[name]
    if channels != len(mean):
        if name != "minus_one_one":
            raise UserError(f"data.normalization = {name}: its constants are for {len(mean)}-channel images, "
                            f"these have {channels}; use data or minus_one_one")
        mean, std = mean[:1] * channels, std[:1] * channels
    return mean, std


STREAM_STATS_IMAGES = 4096  # images decoded to measure the statistics of a set decoded on the fly


def channel_stats(image_sets: list, pixels_per_chunk: int = 2**22) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (unbiased) std, in [0, 1] units, of uint8 images [N, C, H, W] in chunks.

    Counts each channel's 256 pixel values per chunk, so the sums are exact integers whatever the
    number of pixels, and no float copy of the images is ever made. Images decoded on the fly are
    measured on a fixed sample of STREAM_STATS_IMAGES of them (decoding all would cost a pass over
    every file).
    """
    histogram = None
    for images in image_sets:
        chunk = max(1, pixels_per_chunk // int(np.prod(images.shape[1:])))
        positions = range(len(images))
        if getattr(images, "decodes_on_read", False) and len(images) > STREAM_STATS_IMAGES:
            positions = np.sort(np.random.default_rng(0).choice(len(images), STREAM_STATS_IMAGES, replace=False))
        for start in range(0, len(positions), chunk):
            index = positions[start:start + chunk]
            pixels = images[index] if isinstance(index, np.ndarray) else images[index.start:index.stop]
            pixels = pixels.transpose(0, 1).reshape(pixels.shape[1], -1).int()
            offsets = torch.arange(len(pixels), dtype=torch.int32).unsqueeze(1) * 256
            counts = torch.bincount((pixels + offsets).flatten(), minlength=256 * len(pixels)).view(len(pixels), 256)
            histogram = counts if histogram is None else histogram + counts
    values = torch.arange(256, dtype=torch.float64) / 255.0
    counts = histogram.double()
    n = counts.sum(1)
    mean = (counts * values).sum(1) / n
    variance = (counts * (values - mean.unsqueeze(1)) ** 2).sum(1) / (n - 1).clamp_min(1)
    return tuple(mean.tolist()), tuple(variance.sqrt().clamp_min(1e-3).tolist())
