"""Confidence-thresholded hard pseudo-labels from the weak view (FixMatch, Sohn et al. 2020, Eq. 2)."""

from typing import NamedTuple

import torch


class PseudoLabels(NamedTuple):
    probs: torch.Tensor   # [N, C] float32 distribution the labels were taken from
    labels: torch.Tensor  # [N] int64 argmax class
    mask: torch.Tensor    # [N] float32, 1 where the label counts in the loss


def threshold_pseudo_labels(probs: torch.Tensor, threshold: float) -> PseudoLabels:
    """Argmax of probabilities [N, C], kept where the max probability is >= threshold."""
    confidence, labels = probs.max(dim=-1)
    return PseudoLabels(probs, labels, confidence.ge(threshold).float())


def make_pseudo_labels(logits: torch.Tensor, threshold: float) -> PseudoLabels:
    """Softmax, argmax and confidence mask of weak-view logits [N, C] (no gradient)."""
    return threshold_pseudo_labels(torch.softmax(logits.detach().float(), dim=-1), threshold)
