"""The seam between the training loop and an algorithm: what one step gets and returns, and the two
kinds of registry values, a base SSL algorithm and a layer that corrects any base (DebiasPL).

Everything here is a value: an algorithm's options are a frozen dataclass, its state a dict of
tensors it returns anew every step (never mutated), and its rules pure functions of both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch

from debiaspl.algorithm.pseudo_labels import PseudoLabels

# Tensors an algorithm carries from step to step, all of them saved in checkpoints and snapshots:
# "class_marginal" (q_hat [C] float32, tracked by every algorithm) plus the base's own entries.
AlgorithmState = dict[str, torch.Tensor]


class BatchReduction(Protocol):
    """How a step sees the whole batch when it is split over processes (debiaspl.engine.distributed)."""

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean over processes of a per-process value computed from equal-sized shards."""
        ...

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Per-sample shards [n, ...] of all processes concatenated in rank order: [N, ...]."""
        ...


class _WholeBatch:
    """One process holds the whole batch: both reductions are the identity."""

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor


WHOLE_BATCH: BatchReduction = _WholeBatch()


@dataclass(frozen=True)
class StepInputs:
    """The logits one forward pass produced, and which samples they belong to."""

    logits_lb: torch.Tensor      # [B, C] labeled batch (weak view)
    y_lb: torch.Tensor           # [B] int64 labels
    logits_weak: torch.Tensor    # [N, C] unlabeled batch, weak view (N = mu * B); gets no gradient
    logits_strong: torch.Tensor  # [N, C] unlabeled batch, strong view
    idx_ulb: torch.Tensor        # [N] int64 indices into the unlabeled set
    # [N] int64 a teacher's labels for the unlabeled batch, -1 where it has none (data.teacher_logits);
    # they train the samples the mask leaves out (Algorithm.step)
    teacher_labels: torch.Tensor | None = None


@dataclass(frozen=True)
class StepOutput:
    """One step's losses, what the pseudo-labels were, and the algorithm's new state."""

    loss: torch.Tensor           # scalar to backpropagate: loss_sup + lambda_u * loss_unsup
    loss_sup: torch.Tensor       # scalar
    loss_unsup: torch.Tensor     # scalar, before lambda_u
    probs_weak: torch.Tensor     # [N, C] raw weak-view softmax
    probs_pseudo: torch.Tensor   # [N, C] the distribution pseudo-labels come from (debiased under a layer)
    pseudo_labels: torch.Tensor  # [N] int64
    mask: torch.Tensor           # [N] float32, 1 where the pseudo-label counts in the loss
    state: AlgorithmState        # after this step

    @property
    def class_marginal(self) -> torch.Tensor:
        """q_hat [C] after this step."""
        return self.state["class_marginal"]


@dataclass(frozen=True)
class BaseAlgorithm:
    """A registry value: how one SSL method turns the weak view into pseudo-labels and a mask.

    initial_state(options, num_classes, num_unlabeled, device) -> the base's own state entries.
    select(options, probs [N, C], idx_ulb [N], state, reduction) -> (PseudoLabels, the base's new
        entries): during training; `probs` is the weak-view softmax the labels come from (debiased
        under a layer), `reduction` gives the global batch for per-sample state under DDP.
    predict(options, probs [N, C], state) -> PseudoLabels: the same rule outside training
        (evaluation, select, influence), without changing the state.
    per_class(options, state, num_classes) -> {name: [C] tensor}: what to plot per class
        (TensorBoard `pseudo/<name>/<class>`, read at logging intervals only), e.g. FlexMatch's thresholds.
    The unlabeled loss is the masked cross-entropy of the strong view (FixMatch's, Eq. 4) for every base.
    """

    name: str
    Options: type
    initial_state: Callable[[Any, int, int, torch.device | None], AlgorithmState]
    select: Callable[[Any, torch.Tensor, torch.Tensor, AlgorithmState, BatchReduction],
                     tuple[PseudoLabels, AlgorithmState]]
    predict: Callable[[Any, torch.Tensor, AlgorithmState], PseudoLabels]
    per_class: Callable[[Any, AlgorithmState, int], dict[str, torch.Tensor]] = lambda *_: {}  # nothing beyond q_hat
    reads_class_marginal: bool = False  # whether its rule uses q_hat (else q_hat is only watched)


@dataclass(frozen=True)
class Layer:
    """A registry value: a correction over any base's pseudo-labels and loss, driven by q_hat.

    adjust_weak(options, logits_weak [N, C], q_hat before the step) -> the logits the base labels from.
    adjust_strong(options, logits_strong [N, C], q_hat after the step) -> the logits inside the loss.
    changes_labels(options) -> False where the options make the layer the identity (DebiasPL's tau = 0).
    """

    name: str
    Options: type
    adjust_weak: Callable[[Any, torch.Tensor, torch.Tensor], torch.Tensor]
    adjust_strong: Callable[[Any, torch.Tensor, torch.Tensor], torch.Tensor]
    changes_labels: Callable[[Any], bool]
    reads_class_marginal: bool = True
