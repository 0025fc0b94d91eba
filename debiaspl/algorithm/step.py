"""One training step's losses for FixMatch and FixMatch + DebiasPL, as pure functions.

Both take the logits of the labeled batch and of the weak and strong unlabeled views, plus the
current class marginal q_hat, and return the losses, what the pseudo-labels were, and the new
q_hat. FixMatch tracks q_hat too (for monitoring only) so the two runs can be compared.
"""

from typing import Callable, NamedTuple

import torch

from debiaspl.algorithm.debias import add_adaptive_margin, debias_logits, update_class_marginal
from debiaspl.algorithm.losses import masked_unlabeled_loss, supervised_loss
from debiaspl.algorithm.pseudo_labels import make_pseudo_labels


class StepResult(NamedTuple):
    loss: torch.Tensor            # scalar to backpropagate: loss_sup + lambda_u * loss_unsup
    loss_sup: torch.Tensor        # scalar
    loss_unsup: torch.Tensor      # scalar, before lambda_u
    probs_weak: torch.Tensor      # [N, C] raw weak-view softmax
    probs_pseudo: torch.Tensor    # [N, C] the distribution pseudo-labels come from (debiased for DebiasPL)
    pseudo_labels: torch.Tensor   # [N] int64
    mask: torch.Tensor            # [N] float32
    class_marginal: torch.Tensor  # [C] float32, q_hat after this step


def fixmatch_step(logits_lb: torch.Tensor, y_lb: torch.Tensor, logits_weak: torch.Tensor,
                  logits_strong: torch.Tensor, class_marginal: torch.Tensor, *, threshold: float,
                  unlabeled_weight: float, marginal_momentum: float,
                  batch_marginal: torch.Tensor | None = None) -> StepResult:
    """FixMatch: CE(labeled) + lambda_u * mean(mask * CE(strong, argmax softmax(weak))).

    batch_marginal [C]: the weak-view softmax averaged over the whole batch when the batch is split
    over processes (None: over this batch).
    """
    pseudo = make_pseudo_labels(logits_weak, threshold)
    new_marginal = update_class_marginal(class_marginal, _batch_probs(pseudo.probs, batch_marginal),
                                         marginal_momentum)
    loss_sup = supervised_loss(logits_lb, y_lb)
    loss_unsup = masked_unlabeled_loss(logits_strong, pseudo.labels, pseudo.mask)
    return StepResult(loss_sup + unlabeled_weight * loss_unsup, loss_sup, loss_unsup, pseudo.probs,
                      pseudo.probs, pseudo.labels, pseudo.mask, new_marginal)


def debiaspl_step(logits_lb: torch.Tensor, y_lb: torch.Tensor, logits_weak: torch.Tensor,
                  logits_strong: torch.Tensor, class_marginal: torch.Tensor, *, threshold: float,
                  unlabeled_weight: float, marginal_momentum: float, tau: float,
                  batch_marginal: torch.Tensor | None = None) -> StepResult:
    """FixMatch + DebiasPL, in the order of the official code.

    1. pseudo-labels from softmax(z_weak - tau * log q_hat) with q_hat from before this step;
    2. q_hat updated from the raw (not debiased, not masked) weak-view softmax;
    3. adaptive margin loss CE(z_strong + tau * log q_hat, label) with the *updated* q_hat.
    batch_marginal as in fixmatch_step.
    """
    pseudo = make_pseudo_labels(debias_logits(logits_weak.detach(), class_marginal, tau), threshold)
    probs_weak = torch.softmax(logits_weak.detach().float(), dim=-1)
    new_marginal = update_class_marginal(class_marginal, _batch_probs(probs_weak, batch_marginal), marginal_momentum)
    loss_sup = supervised_loss(logits_lb, y_lb)
    logits_margin = add_adaptive_margin(logits_strong, new_marginal, tau)
    loss_unsup = masked_unlabeled_loss(logits_margin, pseudo.labels, pseudo.mask)
    return StepResult(loss_sup + unlabeled_weight * loss_unsup, loss_sup, loss_unsup, probs_weak,
                      pseudo.probs, pseudo.labels, pseudo.mask, new_marginal)


def _batch_probs(probs: torch.Tensor, batch_marginal: torch.Tensor | None) -> torch.Tensor:
    """What update_class_marginal averages: this batch's probabilities, or the given global mean as one row."""
    return probs if batch_marginal is None else batch_marginal[None]


StepFunction = Callable[..., StepResult]

# Selected by `algorithm.name`; every entry takes the five tensors above plus keyword floats.
ALGORITHMS: dict[str, StepFunction] = {"fixmatch": fixmatch_step, "debiaspl": debiaspl_step}
