"""An algorithm as the training loop sees it: a base (FixMatch, FlexMatch) with an optional layer
(DebiasPL) and the options of both, composed by value from the registries in this package.

`Algorithm.step` is one training step's math, `Algorithm.pseudo_labels` the same rule outside
training. Every algorithm tracks q_hat, the momentum estimate of the pseudo-labels' class marginal:
DebiasPL debiases with it, and the dashboards show it for every run.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

import torch

from debiaspl.algorithm.api import (WHOLE_BATCH, AlgorithmState, BaseAlgorithm, BatchReduction, Layer, StepInputs,
                                    StepOutput)
from debiaspl.algorithm.debias import uniform_class_marginal, update_class_marginal
from debiaspl.algorithm.debiaspl import DEBIASPL
from debiaspl.algorithm.fixmatch import FIXMATCH
from debiaspl.algorithm.flexmatch import FLEXMATCH
from debiaspl.algorithm.losses import masked_unlabeled_loss, supervised_loss, teacher_fill_in_loss
from debiaspl.algorithm.pseudo_labels import PseudoLabels

# The registries: `algorithm.name` is a base's name, or BASE+LAYER.
ALGORITHMS: dict[str, BaseAlgorithm] = {base.name: base for base in (FIXMATCH, FLEXMATCH)}
LAYERS: dict[str, Layer] = {layer.name: layer for layer in (DEBIASPL,)}
LAYER_SEPARATOR = "+"
DEFAULT_ALGORITHM = f"fixmatch{LAYER_SEPARATOR}debiaspl"  # FixMatch + DebiasPL, the paper's CIFAR method


def algorithm_names() -> list[str]:
    """Every valid `algorithm.name`: each base alone, then with each layer."""
    return [*ALGORITHMS, *(f"{base}{LAYER_SEPARATOR}{layer}" for base in ALGORITHMS for layer in LAYERS)]


def reads_class_marginal(name: str) -> bool:
    """Whether the algorithm `name` trains on q_hat (so its momentum changes what is learnt), or only
    tracks it for the dashboards."""
    base, layer = parse_algorithm_name(name)
    return base.reads_class_marginal or (layer is not None and layer.reads_class_marginal)


def parse_algorithm_name(name: str) -> tuple[BaseAlgorithm, Layer | None]:
    """'flexmatch+debiaspl' -> (FLEXMATCH, DEBIASPL). Raises ValueError saying what is allowed."""
    if not isinstance(name, str):
        raise ValueError(f"must be a name, one of {', '.join(algorithm_names())}")
    base_name, _, layer_name = name.partition(LAYER_SEPARATOR)
    if base_name in ALGORITHMS and (not layer_name or layer_name in LAYERS):
        return ALGORITHMS[base_name], LAYERS[layer_name] if layer_name else None
    if name in LAYERS:
        raise ValueError(f"{name} is a layer over a base algorithm: write "
                         f"{' or '.join(f'{base}{LAYER_SEPARATOR}{name}' for base in ALGORITHMS)}")
    close = difflib.get_close_matches(str(name), algorithm_names(), n=1)
    raise ValueError(f"must be one of {', '.join(algorithm_names())}" + (f" (did you mean {close[0]}?)" if close else ""))


@dataclass(frozen=True)
class Algorithm:
    """A base, its options, an optional layer and its options, and the options every algorithm has."""

    base: BaseAlgorithm
    base_options: Any
    layer: Layer | None
    layer_options: Any
    unlabeled_weight: float   # lambda_u
    marginal_momentum: float  # DebiasPL's m, the momentum of q_hat

    @property
    def name(self) -> str:
        return self.base.name + (LAYER_SEPARATOR + self.layer.name if self.layer else "")

    @property
    def debiases(self) -> bool:
        """Whether pseudo-labels come from other logits than the raw weak view's."""
        return self.layer is not None and self.layer.changes_labels(self.layer_options)

    def initial_state(self, num_classes: int, num_unlabeled: int, device: torch.device | None = None) -> AlgorithmState:
        state = self.base.initial_state(self.base_options, num_classes, num_unlabeled, device)
        return {"class_marginal": uniform_class_marginal(num_classes, device), **state}

    def step(self, inputs: StepInputs, state: AlgorithmState, reduction: BatchReduction = WHOLE_BATCH) -> StepOutput:
        """Losses, pseudo-labels and the new state of one step; `state` is not modified.

        1. the base's pseudo-labels and mask from the weak view (debiased by the layer with q_hat from
           before this step); 2. q_hat updated from the raw weak softmax of the whole batch; 3. the
        masked cross-entropy of the strong view (with the layer's margin from the updated q_hat);
        4. with teacher labels (the zero-shot setting), averaged with the teacher's cross-entropy on
        the samples the mask leaves out (losses.teacher_fill_in_loss).
        """
        logits_weak = inputs.logits_weak.detach().float()
        probs_weak = torch.softmax(logits_weak, dim=-1)
        marginal = state["class_marginal"]
        probs_pseudo = (torch.softmax(self.layer.adjust_weak(self.layer_options, logits_weak, marginal), dim=-1)
                        if self.layer else probs_weak)
        pseudo, base_state = self.base.select(self.base_options, probs_pseudo, inputs.idx_ulb, state, reduction)
        # the whole batch's mean: under DDP, the mean over processes of their shards' means
        batch_marginal = reduction.mean(probs_weak.mean(dim=0))
        new_marginal = update_class_marginal(marginal, batch_marginal[None], self.marginal_momentum)
        logits_strong = (self.layer.adjust_strong(self.layer_options, inputs.logits_strong, new_marginal)
                         if self.layer else inputs.logits_strong)
        loss_sup = supervised_loss(inputs.logits_lb, inputs.y_lb)
        loss_unsup = masked_unlabeled_loss(logits_strong, pseudo.labels, pseudo.mask)
        if inputs.teacher_labels is not None:  # the zero-shot setting: a teacher fills in where the mask is 0
            loss_unsup = teacher_fill_in_loss(logits_strong, loss_unsup, pseudo.mask, inputs.teacher_labels)
        return StepOutput(loss_sup + self.unlabeled_weight * loss_unsup, loss_sup, loss_unsup, probs_weak, pseudo.probs,
                          pseudo.labels, pseudo.mask, {**state, **base_state, "class_marginal": new_marginal})

    def pseudo_labels(self, logits_weak: torch.Tensor, state: AlgorithmState) -> PseudoLabels:
        """The pseudo-labels and mask the run would train on for weak-view logits [N, C], outside training
        (evaluation, select, influence): the same rule as in `step`, with the state left as it is."""
        logits = logits_weak.detach().float()
        if self.layer:
            logits = self.layer.adjust_weak(self.layer_options, logits, state["class_marginal"].to(logits.device))
        return self.base.predict(self.base_options, torch.softmax(logits, dim=-1), state)

    def per_class(self, state: AlgorithmState) -> dict[str, torch.Tensor]:
        """What to plot per class: q_hat ("class_marginal") and the base's own (FlexMatch's thresholds)."""
        num_classes = len(state["class_marginal"])
        return {"class_marginal": state["class_marginal"], **self.base.per_class(self.base_options, state, num_classes)}

    def loss_logits(self, logits_strong: torch.Tensor, state: AlgorithmState) -> torch.Tensor:
        """Strong-view logits [N, C] as the unlabeled cross-entropy sees them (with the layer's margin)."""
        if not self.layer:
            return logits_strong
        return self.layer.adjust_strong(self.layer_options, logits_strong, state["class_marginal"].to(logits_strong.device))


def compose_algorithm(name: str, base_options: Any = None, layer_options: Any = None, *, unlabeled_weight: float = 1.0,
                      marginal_momentum: float = 0.999) -> Algorithm:
    """The Algorithm `name` names, with the given options (None: the defaults of each part)."""
    base, layer = parse_algorithm_name(name)
    if base_options is None:
        base_options = base.Options()
    if layer is not None and layer_options is None:
        layer_options = layer.Options()
    return Algorithm(base, base_options, layer, layer_options if layer else None, unlabeled_weight, marginal_momentum)


def fixmatch_step(logits_lb: torch.Tensor, y_lb: torch.Tensor, logits_weak: torch.Tensor, logits_strong: torch.Tensor,
                  class_marginal: torch.Tensor, *, threshold: float, unlabeled_weight: float,
                  marginal_momentum: float) -> StepOutput:
    """FixMatch's step for your own loop: CE(labeled) + lambda_u * mean(mask * CE(strong, argmax softmax(weak)))."""
    algorithm = compose_algorithm("fixmatch", FIXMATCH.Options(threshold), unlabeled_weight=unlabeled_weight,
                                  marginal_momentum=marginal_momentum)
    return algorithm.step(_inputs(logits_lb, y_lb, logits_weak, logits_strong), {"class_marginal": class_marginal})


def debiaspl_step(logits_lb: torch.Tensor, y_lb: torch.Tensor, logits_weak: torch.Tensor, logits_strong: torch.Tensor,
                  class_marginal: torch.Tensor, *, threshold: float, unlabeled_weight: float, marginal_momentum: float,
                  tau: float) -> StepOutput:
    """FixMatch + DebiasPL's step for your own loop; q_hat after the step is `.class_marginal`."""
    algorithm = compose_algorithm(f"fixmatch{LAYER_SEPARATOR}debiaspl", FIXMATCH.Options(threshold),
                                  DEBIASPL.Options(tau), unlabeled_weight=unlabeled_weight,
                                  marginal_momentum=marginal_momentum)
    return algorithm.step(_inputs(logits_lb, y_lb, logits_weak, logits_strong), {"class_marginal": class_marginal})


def _inputs(logits_lb, y_lb, logits_weak, logits_strong) -> StepInputs:
    """The step of FixMatch (+ DebiasPL) never reads idx_ulb: any index vector does."""
    return StepInputs(logits_lb, y_lb, logits_weak, logits_strong, torch.arange(len(logits_weak)))
