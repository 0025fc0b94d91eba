"""The algorithm math as pure tensor functions (imports only torch and the leaf debiaspl.options).

A base algorithm (FixMatch, FlexMatch) and an optional layer over it (DebiasPL) are registry values;
`compose_algorithm` puts them together into the `Algorithm` the trainer calls. From your own loop:

    from debiaspl.algorithm import StepInputs, compose_algorithm
    algorithm = compose_algorithm("flexmatch+debiaspl")
    state = algorithm.initial_state(num_classes, num_unlabeled)
    out = algorithm.step(StepInputs(logits_lb, y_lb, logits_weak, logits_strong, idx_ulb), state)
    out.loss.backward(); state = out.state
"""

from debiaspl.algorithm.api import (WHOLE_BATCH, AlgorithmState, BaseAlgorithm, BatchReduction, Layer, StepInputs,
                                    StepOutput)
from debiaspl.algorithm.compose import (ALGORITHMS, DEFAULT_ALGORITHM, LAYER_SEPARATOR, LAYERS, Algorithm,
                                        algorithm_names, compose_algorithm, debiaspl_step, fixmatch_step,
                                        parse_algorithm_name, reads_class_marginal)
from debiaspl.algorithm.debias import (add_adaptive_margin, debias_logits, uniform_class_marginal,
                                       update_class_marginal)
from debiaspl.algorithm.legacy import upgrade_legacy_config
from debiaspl.algorithm.losses import masked_unlabeled_loss, supervised_loss
from debiaspl.algorithm.pseudo_labels import PseudoLabels, make_pseudo_labels, threshold_pseudo_labels
from debiaspl.algorithm.zero_shot import DebiasedPredictions, debias_logit_stream

__all__ = [
    "ALGORITHMS", "DEFAULT_ALGORITHM", "LAYERS", "LAYER_SEPARATOR", "WHOLE_BATCH", "Algorithm", "AlgorithmState", "BaseAlgorithm",
    "BatchReduction", "DebiasedPredictions", "Layer", "PseudoLabels", "StepInputs", "StepOutput",
    "add_adaptive_margin", "algorithm_names", "compose_algorithm", "debias_logit_stream", "debias_logits",
    "debiaspl_step", "fixmatch_step", "make_pseudo_labels", "masked_unlabeled_loss", "parse_algorithm_name", "reads_class_marginal",
    "supervised_loss", "threshold_pseudo_labels", "uniform_class_marginal", "update_class_marginal",
    "upgrade_legacy_config",
]
