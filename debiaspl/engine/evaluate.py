"""Test-set evaluation of a model, and the quality of its pseudo-labels on the unlabeled set."""

from __future__ import annotations

import torch
from torch import nn

from debiaspl.algorithm import Algorithm, AlgorithmState
from debiaspl.data.datasets import ImageSet
from debiaspl.inference import predict_logits
from debiaspl.metrics.classification import balanced_accuracy, classification_metrics, per_class_accuracy
from debiaspl.metrics.distribution import kl_divergence


def evaluate_model(model: nn.Module, test: ImageSet, labeled_counts: list[int], mean: torch.Tensor,
                   std: torch.Tensor, batch_size: int, device: torch.device) -> dict:
    logits = predict_logits(model, test.images, mean, std, batch_size, device)
    return classification_metrics(logits, test.labels, labeled_counts)


def pseudo_label_sample(unlabeled: ImageSet, limit: int) -> ImageSet:
    """The unlabeled images whose pseudo-labels evaluations measure: all (limit 0), or a fixed random
    `limit` of them in their original order (eval.pseudo_label_images), the same in every run."""
    if not 0 < limit < len(unlabeled.labels):
        return unlabeled
    order = torch.randperm(len(unlabeled.labels), generator=torch.Generator().manual_seed(0))
    return unlabeled.subset(order[:limit].sort().values.numpy())


def evaluate_pseudo_labels(model: nn.Module, unlabeled: ImageSet, algorithm: Algorithm, state: AlgorithmState,
                           mean: torch.Tensor, std: torch.Tensor, batch_size: int, device: torch.device) -> dict:
    """The algorithm's pseudo-labels of the (un-augmented) unlabeled set, or a sample of it, against its hidden labels.

    `state` (on the CPU) is the algorithm's as training left it. Returns pseudo_acc, pseudo_balanced_acc,
    pseudo_mask_rate, pseudo_acc_masked (accuracy among the confident ones) and pseudo_kl_to_true: KL(pseudo-label class
    histogram || true class histogram) of the unlabeled set, the bias DebiasPL removes (0 when the
    pseudo-labels have the true class proportions, whatever their accuracy).
    """
    logits = predict_logits(model, unlabeled.images, mean, std, batch_size, device)
    pseudo = algorithm.pseudo_labels(logits, state)
    num_classes = logits.shape[1]
    correct = (pseudo.labels == unlabeled.labels).double()
    class_acc = per_class_accuracy(pseudo.labels, unlabeled.labels, num_classes)
    masked = pseudo.mask.double()
    pseudo_histogram = torch.bincount(pseudo.labels, minlength=num_classes)
    true_histogram = torch.bincount(unlabeled.labels, minlength=num_classes)
    return {
        "pseudo_acc": correct.mean().item(),
        "pseudo_balanced_acc": balanced_accuracy(class_acc),
        "pseudo_mask_rate": masked.mean().item(),
        "pseudo_acc_masked": ((correct * masked).sum() / masked.sum()).item() if masked.sum() > 0 else float("nan"),
        "pseudo_kl_to_true": kl_divergence(pseudo_histogram, true_histogram),
    }
