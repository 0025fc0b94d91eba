"""Test-set evaluation of a model, and the quality of its pseudo-labels on the unlabeled set."""

from __future__ import annotations

import torch
from torch import nn

from debiaspl.algorithm import debias_logits, make_pseudo_labels
from debiaspl.analysis.metrics import classification_metrics, per_class_accuracy
from debiaspl.data.datasets import ImageSet
from debiaspl.data.loaders import to_model_input


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                   batch_size: int, device: torch.device) -> torch.Tensor:
    """Logits [N, C] float32 on the CPU for uint8 images [N, C, H, W], in eval mode."""
    was_training = model.training
    model.eval()
    chunks = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].to(device, non_blocking=True)
        chunks.append(model(to_model_input(batch, mean, std)).float().cpu())
    model.train(was_training)
    return torch.cat(chunks)


def evaluate_model(model: nn.Module, test: ImageSet, labeled_counts: list[int], mean: torch.Tensor,
                   std: torch.Tensor, batch_size: int, device: torch.device) -> dict:
    logits = predict_logits(model, test.images, mean, std, batch_size, device)
    return classification_metrics(logits, test.labels, labeled_counts)


def evaluate_pseudo_labels(model: nn.Module, unlabeled: ImageSet, class_marginal: torch.Tensor, tau: float,
                           threshold: float, mean: torch.Tensor, std: torch.Tensor, batch_size: int,
                           device: torch.device) -> dict:
    """Pseudo-labels of the whole (un-augmented) unlabeled set against its hidden labels.

    tau = 0 gives FixMatch's pseudo-labels. Returns pseudo_acc, pseudo_balanced_acc, pseudo_mask_rate
    and pseudo_acc_masked (accuracy among the confident ones).
    """
    logits = predict_logits(model, unlabeled.images, mean, std, batch_size, device)
    pseudo = make_pseudo_labels(debias_logits(logits, class_marginal.cpu(), tau), threshold)
    correct = (pseudo.labels == unlabeled.labels).double()
    class_acc = per_class_accuracy(pseudo.labels, unlabeled.labels, logits.shape[1])
    masked = pseudo.mask.double()
    return {
        "pseudo_acc": correct.mean().item(),
        "pseudo_balanced_acc": class_acc[~class_acc.isnan()].mean().item(),
        "pseudo_mask_rate": masked.mean().item(),
        "pseudo_acc_masked": ((correct * masked).sum() / masked.sum()).item() if masked.sum() > 0 else float("nan"),
    }
