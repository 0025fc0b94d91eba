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


def teacher_fill_in_loss(logits_strong: torch.Tensor, unlabeled_loss: torch.Tensor, mask: torch.Tensor,
                         teacher_labels: torch.Tensor) -> torch.Tensor:
    """The official zero-shot script's unlabeled loss: the mean of the pseudo-label loss and of
    the teacher's loss on the samples the mask leaves out: [N, C], scalar, [N], [N] -> scalar.

    teacher_labels [N] is -1 where the teacher is not confident enough to fill in. As in
    main_DebiasPL_ZeroShot.py, `(mask_clip - mask).ge(0.01)` selects the samples, the teacher's
    cross-entropy sees the same (margin-adjusted) strong logits, and both terms are averaged.
    """
    fill = ((teacher_labels >= 0) & (mask <= 0)).float()
    teacher_loss = masked_unlabeled_loss(logits_strong, teacher_labels.clamp(min=0), fill)
    return (unlabeled_loss + teacher_loss) / 2
