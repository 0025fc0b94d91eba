"""The two cross-entropies of FixMatch-style training (Sohn et al. 2020, Eqs. 1 and 4)."""

import torch
import torch.nn.functional as F


def supervised_loss(logits_lb: torch.Tensor, y_lb: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the labeled batch: [B, C], [B] -> scalar."""
    return F.cross_entropy(logits_lb.float(), y_lb)


def masked_unlabeled_loss(logits_strong: torch.Tensor, pseudo_labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over *all* mu*B samples of mask * CE(strong logits, pseudo-label): [N, C], [N], [N] -> scalar.

    Dividing by N rather than by the number of confident samples is FixMatch's choice: the loss
    weight then grows with the mask rate instead of being constant from the first step.
    """
    per_sample = F.cross_entropy(logits_strong.float(), pseudo_labels, reduction="none")
    return (per_sample * mask).mean()
