"""DebiasPL (Wang et al., CVPR 2022) as a layer over any base algorithm's pseudo-labels and loss.

Causal logit debiasing: the base makes its pseudo-labels (and, for FlexMatch, its learning effects)
from softmax(z_weak - tau * log q_hat), with q_hat from before the step. Adaptive margin loss: the
strong-view logits inside the cross-entropy become z_strong + tau * log q_hat with the updated q_hat.
The order is the official code's; q_hat itself is updated from the raw weak view (debias.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from debiaspl.algorithm.api import Layer
from debiaspl.algorithm.debias import add_adaptive_margin, debias_logits
from debiaspl.options import option


@dataclass(frozen=True)
class DebiasPLOptions:
    tau: float = option(0.4, "DebiasPL's tau (--tau of the official code): strength of the logit debiasing and of the adaptive margin", ge=0)


def _debias(options: DebiasPLOptions, logits_weak: torch.Tensor, class_marginal: torch.Tensor) -> torch.Tensor:
    return debias_logits(logits_weak, class_marginal, options.tau)


def _margin(options: DebiasPLOptions, logits_strong: torch.Tensor, class_marginal: torch.Tensor) -> torch.Tensor:
    return add_adaptive_margin(logits_strong, class_marginal, options.tau)


def _changes_labels(options: DebiasPLOptions) -> bool:
    return options.tau > 0


DEBIASPL = Layer("debiaspl", DebiasPLOptions, _debias, _margin, _changes_labels)
