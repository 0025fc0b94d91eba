"""FlexMatch (Zhang et al., NeurIPS 2021): curriculum pseudo-labeling with class-wise thresholds.

Each unlabeled sample remembers the last class it was confidently (max prob >= tau) predicted as.
A class's learning effect sigma(c) is the number of samples remembered as c; normalised by the
largest count, or with threshold warm-up by the largest of that and the number of samples never
confidently predicted, it gives beta(c) in [0, 1], and the class's threshold is tau * M(beta(c))
with the convex mapping M(x) = x / (2 - x). As in the authors' code (TorchSSL, USB): the mask uses
the thresholds from before this step's update, every threshold is 0 (all samples pass) until the
first confident prediction, and a sample twice in a batch keeps its last confident label.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from debiaspl.algorithm.api import AlgorithmState, BaseAlgorithm, BatchReduction
from debiaspl.algorithm.pseudo_labels import PseudoLabels
from debiaspl.options import option

NOT_SELECTED = -1  # in selected_label: never confidently predicted yet


@dataclass(frozen=True)
class FlexMatchOptions:
    threshold: float = option(0.95, "FlexMatch's tau: the upper confidence threshold, reached by well-learnt classes; also what counts as a confident prediction in the learning effects", ge=0, le=1)
    warmup: bool = option(True, "threshold warm-up (thresh_warmup of the authors' code): normalise the learning effects by the unused samples too while they are the majority, so thresholds rise gradually from 0")


def learning_effects(selected_label: torch.Tensor, num_classes: int, warmup: bool) -> torch.Tensor:
    """beta(c) [C] float32 from selected_label [M] int64 (a class per unlabeled sample, -1 = none yet).

    All zeros while no sample has been selected. No host sync (torch.bincount would read the input's
    range back to the host on CUDA).
    """
    counts = torch.zeros(num_classes + 1, dtype=torch.int64, device=selected_label.device)
    counts.scatter_add_(0, selected_label + 1, torch.ones_like(selected_label))
    unused, per_class = counts[0], counts[1:]
    denominator = torch.maximum(per_class.max(), unused) if warmup else per_class.max()
    # float64 division, then float32: the authors' code divides Python ints into a float32 tensor
    effects = (per_class.double() / denominator.clamp_min(1).double()).float()
    return torch.where(unused < len(selected_label), effects, torch.zeros_like(effects))


def convex_mapping(effects: torch.Tensor) -> torch.Tensor:
    """M(x) = x / (2 - x): thresholds stay low while a class is little learnt, then rise quickly."""
    return effects / (2.0 - effects)


def class_thresholds(selected_label: torch.Tensor, num_classes: int, threshold: float, warmup: bool) -> torch.Tensor:
    """tau * M(beta(c)) [C] float32 with the convex mapping."""
    return threshold * convex_mapping(learning_effects(selected_label, num_classes, warmup))


def record_selected_labels(selected_label: torch.Tensor, idx_ulb: torch.Tensor, labels: torch.Tensor,
                           confident: torch.Tensor) -> torch.Tensor:
    """A new selected_label [M] with labels [N] written at idx_ulb [N] where confident [N] (bool).

    A sample twice in a batch (at an epoch boundary) keeps its last confident label, deterministically
    on every device, without a host sync.
    """
    positions = torch.arange(len(idx_ulb), device=idx_ulb.device)
    candidates = torch.where(confident, positions, torch.full_like(positions, -1))
    last = torch.full_like(selected_label, -1).scatter_reduce(0, idx_ulb, candidates, "amax")
    return torch.where(last >= 0, labels[last.clamp_min(0)], selected_label)


def _initial_state(options: FlexMatchOptions, num_classes: int, num_unlabeled: int,
                   device: torch.device | None) -> AlgorithmState:
    return {"selected_label": torch.full((num_unlabeled,), NOT_SELECTED, dtype=torch.int64, device=device)}


def _flexible_threshold(options: FlexMatchOptions, probs: torch.Tensor,
                        selected_label: torch.Tensor) -> tuple[PseudoLabels, torch.Tensor]:
    """Argmax of probs [N, C], masked by its class's threshold; also the confidence [N]."""
    confidence, labels = probs.max(dim=-1)
    thresholds = class_thresholds(selected_label.to(probs.device), probs.shape[1], options.threshold, options.warmup)
    return PseudoLabels(probs, labels, confidence.ge(thresholds[labels]).float()), confidence


def _predict(options: FlexMatchOptions, probs: torch.Tensor, state: AlgorithmState) -> PseudoLabels:
    return _flexible_threshold(options, probs, state["selected_label"])[0]


def _select(options: FlexMatchOptions, probs: torch.Tensor, idx_ulb: torch.Tensor, state: AlgorithmState,
            reduction: BatchReduction) -> tuple[PseudoLabels, AlgorithmState]:
    pseudo, confidence = _flexible_threshold(options, probs, state["selected_label"])
    # every process applies the whole batch's selections, so their copies of the state stay equal
    selected = record_selected_labels(state["selected_label"], reduction.gather(idx_ulb),
                                      reduction.gather(pseudo.labels), reduction.gather(confidence.ge(options.threshold)))
    return pseudo, {"selected_label": selected}


def _per_class(options: FlexMatchOptions, state: AlgorithmState, num_classes: int) -> dict[str, torch.Tensor]:
    effects = learning_effects(state["selected_label"], num_classes, options.warmup)
    return {"flexmatch_learning_effect": effects, "flexmatch_threshold": options.threshold * convex_mapping(effects)}


FLEXMATCH = BaseAlgorithm("flexmatch", FlexMatchOptions, _initial_state, _select, _predict, _per_class)
