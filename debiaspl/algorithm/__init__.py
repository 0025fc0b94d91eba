"""The algorithm math as pure tensor functions (imports only torch).

Call these from your own training loop:

    from debiaspl.algorithm import debiaspl_step, uniform_class_marginal
    q_hat = uniform_class_marginal(num_classes)
    out = debiaspl_step(logits_lb, y_lb, logits_weak, logits_strong, q_hat,
                        threshold=0.95, unlabeled_weight=1.0, marginal_momentum=0.999, tau=0.4)
    out.loss.backward(); q_hat = out.class_marginal
"""

from debiaspl.algorithm.debias import (add_adaptive_margin, debias_logits, uniform_class_marginal,
                                       update_class_marginal)
from debiaspl.algorithm.losses import masked_unlabeled_loss, supervised_loss
from debiaspl.algorithm.pseudo_labels import PseudoLabels, make_pseudo_labels
from debiaspl.algorithm.step import ALGORITHMS, StepResult, debiaspl_step, fixmatch_step
from debiaspl.algorithm.zero_shot import DebiasedPredictions, debias_logit_stream

__all__ = [
    "ALGORITHMS", "DebiasedPredictions", "PseudoLabels", "StepResult", "add_adaptive_margin", "debias_logit_stream",
    "debias_logits", "debiaspl_step",
    "fixmatch_step", "make_pseudo_labels", "masked_unlabeled_loss", "supervised_loss",
    "uniform_class_marginal", "update_class_marginal",
]
