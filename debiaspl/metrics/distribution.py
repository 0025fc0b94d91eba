"""Class-distribution drift of pseudo-labels: how far the pseudo-label class histogram strays from the truth.

DebiasPL (Wang et al., CVPR 2022) removes the bias of FixMatch pseudo-labels toward head classes; these
functions measure that bias (KL divergence, imbalance ratio, per-class precision / recall / count ratio).
"""

import math

import torch


def kl_divergence(p: torch.Tensor, q: torch.Tensor, eps: float = 1e-8) -> float:
    """KL(p || q) in nats of two non-negative [C] vectors (counts or probabilities).

    `eps` is added to every entry of both before normalising each to sum 1, so a class that is empty in
    `q` gives a large but finite value. nan for C == 0. Host sync (returns a float): logging interval only.
    """
    if p.shape != q.shape or p.dim() != 1:
        raise ValueError(f"kl_divergence needs two [C] vectors of the same length, got {tuple(p.shape)} "
                         f"and {tuple(q.shape)}")
    if p.numel() == 0:
        return math.nan
    p = p.double() + eps
    q = q.double() + eps
    p, q = p / p.sum(), q / q.sum()
    return (p * (p.log() - q.log())).sum().item()


def imbalance_ratio(counts: torch.Tensor) -> float:
    """max(counts) / max(min(counts), 1) of class counts [C]; nan when there are no counts at all.

    The floor of 1 keeps a class that received no pseudo-label from giving an infinite ratio: the ratio
    is then simply the count of the largest class. Host sync: logging interval only.
    """
    if counts.numel() == 0 or counts.sum().item() == 0:
        return math.nan
    counts = counts.double()
    return (counts.max() / counts.min().clamp(min=1)).item()


def confusion_update(confusion: torch.Tensor, true_labels: torch.Tensor, predicted: torch.Tensor) -> None:
    """Add this batch to `confusion` [C, C] (rows = true class, columns = predicted class), in place.

    confusion: contiguous int64 [C, C] on the labels' device; true_labels, predicted: integer [N].
    Device-side: one scatter_add_ on the flattened index true * C + predicted, no host sync, so it may be
    called every step.
    """
    num_classes = confusion.shape[0]
    flat = true_labels.long() * num_classes + predicted.long()
    confusion.view(-1).scatter_add_(0, flat, torch.ones_like(flat, dtype=confusion.dtype))


def per_class_precision_recall(confusion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """precision [C] = diag / column sums, recall [C] = diag / row sums, float64; nan where the sum is 0.

    confusion: [C, C] with rows = true class, columns = predicted class (as built by `confusion_update`).
    A class never predicted has nan precision; a class never present has nan recall.
    """
    confusion = confusion.double()
    diagonal = confusion.diagonal()
    # diag <= its row and column sum, so a zero sum gives 0 / 0 = nan, never inf.
    return diagonal / confusion.sum(dim=0), diagonal / confusion.sum(dim=1)


def count_ratio(confusion: torch.Tensor) -> torch.Tensor:
    """[C] float64: how many samples were predicted as c per sample truly of class c; nan where none is c.

    Above 1 the pseudo-labels over-predict the class (typical of head classes under FixMatch), below 1
    they under-predict it.
    """
    confusion = confusion.double()
    true_counts = confusion.sum(dim=1)
    ratio = confusion.sum(dim=0) / true_counts
    return torch.where(true_counts > 0, ratio, torch.full_like(ratio, math.nan))
