"""FixMatch (Sohn et al., NeurIPS 2020): one fixed confidence threshold for every class, no state."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from debiaspl.algorithm.api import AlgorithmState, BaseAlgorithm, BatchReduction
from debiaspl.algorithm.pseudo_labels import PseudoLabels, threshold_pseudo_labels
from debiaspl.options import option


@dataclass(frozen=True)
class FixMatchOptions:
    threshold: float = option(0.95, "FixMatch's tau: confidence a pseudo-label needs to count in the loss", ge=0, le=1)


def _initial_state(options: FixMatchOptions, num_classes: int, num_unlabeled: int,
                   device: torch.device | None) -> AlgorithmState:
    return {}


def _select(options: FixMatchOptions, probs: torch.Tensor, idx_ulb: torch.Tensor, state: AlgorithmState,
            reduction: BatchReduction) -> tuple[PseudoLabels, AlgorithmState]:
    return threshold_pseudo_labels(probs, options.threshold), {}


def _predict(options: FixMatchOptions, probs: torch.Tensor, state: AlgorithmState) -> PseudoLabels:
    return threshold_pseudo_labels(probs, options.threshold)


FIXMATCH = BaseAlgorithm("fixmatch", FixMatchOptions, _initial_state, _select, _predict)
