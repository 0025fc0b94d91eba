"""DebiasPL's two corrections, driven by a momentum estimate of the pseudo-labels' class marginal.

Wang et al., "Debiased Learning from Naturally Imbalanced Pseudo-Labels", CVPR 2022:
causal logit debiasing (Eq. 4) subtracts tau * log q_hat from the weak-view logits before the
softmax that makes pseudo-labels; the adaptive margin loss (Eq. 6) adds tau * log q_hat to the
strong-view logits inside the cross-entropy.
"""

import torch

# q_hat stays strictly positive in exact arithmetic (it starts uniform and mixes in softmax
# outputs); the floor only guards log() against an underflowed entry when momentum is tiny.
_MARGINAL_FLOOR = torch.finfo(torch.float32).tiny


def uniform_class_marginal(num_classes: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The starting estimate of q_hat: [C] float32, all 1 / C."""
    return torch.full((num_classes,), 1.0 / num_classes, dtype=torch.float32, device=device)


def update_class_marginal(class_marginal: torch.Tensor, probs_weak: torch.Tensor, momentum: float) -> torch.Tensor:
    """q_hat <- m * q_hat + (1 - m) * mean over the batch of the weak-view softmax.

    class_marginal: [C]; probs_weak: [N, C] raw (not debiased, not masked) probabilities.
    Returns a new float32 [C] tensor, without gradient. The mean is over the batch dimension only
    (averaging over all N * C entries instead, as one public implementation does, gives the
    constant 1 / C and silently turns DebiasPL off). Kept in float32 because under bf16 a
    0.999 moving average cannot move: each step's change is below one bf16 unit.
    """
    batch_marginal = probs_weak.detach().float().mean(dim=0)
    return momentum * class_marginal.float() + (1.0 - momentum) * batch_marginal


def debias_logits(logits: torch.Tensor, class_marginal: torch.Tensor, tau: float) -> torch.Tensor:
    """Causal logit debiasing: logits - tau * log q_hat.  [N, C], [C] -> [N, C] (float32)."""
    return logits.float() - tau * class_marginal.clamp_min(_MARGINAL_FLOOR).log()


def add_adaptive_margin(logits: torch.Tensor, class_marginal: torch.Tensor, tau: float) -> torch.Tensor:
    """Adaptive margin: logits + tau * log q_hat, so frequent classes must win by a larger margin.

    [N, C], [C] -> [N, C] (float32); gradients flow to `logits`, not to the marginal.
    """
    return logits.float() + tau * class_marginal.detach().clamp_min(_MARGINAL_FLOOR).log()
