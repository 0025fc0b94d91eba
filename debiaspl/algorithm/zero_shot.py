"""Zero-shot DebiasPL: debias the pseudo-labels of a fixed model (CLIP in the paper) from its logits alone.

No training: the logits are read batch by batch, in a random order, and each batch is debiased
exactly as the weak view is in training (debiaspl_step): pseudo-labels from
softmax(z - tau * log q_hat) with q_hat as it stood before the batch, then q_hat updated with the
batch's mean raw softmax. A random order matters because files of logits are often sorted by class,
and a momentum average over a class-sorted stream follows the current class instead of the
marginal. The first batches meet a q_hat still near its start (uniform, unless `initial_marginal`
is given, e.g. the q_hat a first pass ended with), so they are debiased less than later ones.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from debiaspl.algorithm.debias import debias_logits, uniform_class_marginal, update_class_marginal


class DebiasedPredictions(NamedTuple):
    labels: torch.Tensor            # [N] int64 argmax of the debiased softmax, in the input's order
    confidence: torch.Tensor        # [N] float32 its probability
    plain_labels: torch.Tensor      # [N] int64 argmax of the raw logits (the model's own prediction)
    plain_confidence: torch.Tensor  # [N] float32 its softmax probability
    class_marginal: torch.Tensor    # [C] float32 q_hat after the last batch


def debias_logit_stream(logits, tau: float, momentum: float, batch_size: int = 256,
                        generator: torch.Generator | None = None,
                        initial_marginal: torch.Tensor | None = None) -> DebiasedPredictions:
    """Debiased pseudo-labels of `logits` [N, C]: a tensor, or a numpy array (memory-mapped is fine:
    only one batch of rows is read into a tensor at a time).

    `generator` seeds the order the rows are streamed in; None keeps the given order. tau = 0 gives
    the plain argmax.
    """
    num_samples, num_classes = logits.shape
    order = (torch.randperm(num_samples, generator=generator) if generator is not None
             else torch.arange(num_samples))
    labels, plain_labels = (torch.empty(num_samples, dtype=torch.int64) for _ in range(2))
    confidence, plain_confidence = (torch.empty(num_samples, dtype=torch.float32) for _ in range(2))
    class_marginal = uniform_class_marginal(num_classes) if initial_marginal is None else initial_marginal.float()
    for start in range(0, num_samples, batch_size):
        # sorted, so a memory-mapped file is read front to back within the batch (order within a batch is moot)
        rows = order[start:start + batch_size].sort().values
        batch = torch.as_tensor(logits[rows if isinstance(logits, torch.Tensor) else rows.numpy()]).float()
        confidence[rows], labels[rows] = torch.softmax(debias_logits(batch, class_marginal, tau), dim=-1).max(dim=-1)
        probs = torch.softmax(batch, dim=-1)
        plain_confidence[rows], plain_labels[rows] = probs.max(dim=-1)
        class_marginal = update_class_marginal(class_marginal, probs, momentum)
    return DebiasedPredictions(labels, confidence, plain_labels, plain_confidence, class_marginal)
