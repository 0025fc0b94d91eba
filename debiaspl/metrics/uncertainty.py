"""Entropy-based uncertainty and calibration of pseudo-labels: does the entropy flag wrong pseudo-labels
(AUROC, Mann-Whitney U), and does the confidence match the accuracy (ECE, Guo et al., ICML 2017)?
"""

import math

import torch


def normalized_entropy(probs: torch.Tensor) -> torch.Tensor:
    """[N, C] probabilities -> [N] float32 entropy H(p) / log C in [0, 1], with 0 log 0 = 0.

    1 for a uniform row, 0 for a one-hot row; C == 1 gives zeros (a single class carries no uncertainty).
    """
    probs = probs.float()
    num_classes = probs.shape[1]
    if num_classes <= 1:
        return torch.zeros(probs.shape[0], dtype=torch.float32, device=probs.device)
    entropy = -torch.special.xlogy(probs, probs).sum(dim=1)
    # Rounding can put a uniform row a hair above 1 (or a one-hot row a hair below 0).
    return (entropy / math.log(num_classes)).clamp(0.0, 1.0)


def _bin_index(values: torch.Tensor, bins: int, low: float, high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """[N] bin of each value among `bins` equal-width bins over [low, high], and [N] bool "not nan".

    Bins are closed on the left, the last bin also on the right (value == high is in it); values outside
    the range are clamped into the end bins. NaN values get bin 0 and valid = False.
    """
    if bins < 1:
        raise ValueError("a histogram needs at least one bin")
    if not high > low:
        raise ValueError(f"the histogram range needs low < high, got [{low}, {high}]")
    values = values.to(torch.promote_types(values.dtype, torch.float32))
    valid = ~values.isnan()
    # Clamping before scaling keeps +-inf from overflowing the cast to an integer.
    values = values.nan_to_num(nan=low).clamp(low, high)
    index = ((values - low) * (bins / (high - low))).floor().long().clamp(max=bins - 1)
    return index, valid


def histogram_update(counts: torch.Tensor, values: torch.Tensor, low: float = 0.0, high: float = 1.0,
                     where: torch.Tensor | None = None) -> None:
    """Add the histogram of `values` [N] to `counts` [bins] (int64), in place.

    len(counts) equal-width bins over [low, high]; value == high goes into the last bin, values outside the
    range into the end bins, NaN values are ignored. `where` [N] bool selects the values to count: unlike
    boolean indexing (`values[mask]`), it needs no host sync on a GPU. Device-side (scatter_add_): may be
    called every step.
    """
    index, valid = _bin_index(values, counts.shape[0], low, high)
    if where is not None:
        valid = valid & where
    counts.scatter_add_(0, index, valid.to(counts.dtype))


def auroc_from_histograms(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """Exact AUROC of a score that should be higher for positives, from histograms [bins] of that score.

    Both histograms use the same bins, ordered by increasing score; two samples in the same bin count as a
    tie (1/2), so this is the Mann-Whitney AUROC of the binned score:
    P(pos > neg) + P(pos == neg) / 2. nan when either histogram is empty. Used with score = entropy,
    positive = wrong pseudo-label, negative = right pseudo-label. Host sync: logging interval only.
    """
    positive, negative = positive.long(), negative.long()
    num_positive, num_negative = positive.sum().item(), negative.sum().item()
    if num_positive == 0 or num_negative == 0:
        return math.nan
    negative_below = negative.cumsum(0) - negative  # negatives in strictly lower bins
    # Twice the Mann-Whitney U, in integers so the result is exact before the one division.
    twice_u = (2 * positive * negative_below + positive * negative).sum().item()
    return twice_u / (2 * num_positive * num_negative)


def calibration_update(count: torch.Tensor, confidence_sum: torch.Tensor, correct_sum: torch.Tensor,
                       confidence: torch.Tensor, correct: torch.Tensor) -> None:
    """Add a batch to the per-bin calibration sums, in place; one bin per entry of `count` over [0, 1].

    count: [bins] int64; confidence_sum, correct_sum: [bins] float (float64 keeps long runs exact enough);
    confidence: [N] in [0, 1] (binned as in `histogram_update`); correct: [N] bool or 0/1.
    For each bin b: count[b] += n_b, confidence_sum[b] += sum of its confidences, correct_sum[b] += number
    right. NaN confidences are ignored. Device-side, no host sync: may be called every step.
    """
    index, valid = _bin_index(confidence, count.shape[0], 0.0, 1.0)
    count.scatter_add_(0, index, valid.to(count.dtype))
    zeros = torch.zeros_like(confidence, dtype=confidence_sum.dtype)
    confidence_sum.scatter_add_(0, index, torch.where(valid, confidence.to(confidence_sum.dtype), zeros))
    correct_sum.scatter_add_(0, index, torch.where(valid, correct.to(correct_sum.dtype), zeros.to(correct_sum.dtype)))


def expected_calibration_error(count: torch.Tensor, confidence_sum: torch.Tensor, correct_sum: torch.Tensor) -> float:
    """ECE = sum over non-empty bins of (n_b / N) |acc_b - conf_b| (Guo et al. 2017); nan when N == 0.

    Inputs [bins] as filled by `calibration_update`. Since n_b (acc_b - conf_b) = correct_sum_b -
    confidence_sum_b, ECE = sum_b |correct_sum_b - confidence_sum_b| / N, and empty bins add 0.
    Host sync: logging interval only.
    """
    total = count.sum().item()
    if total == 0:
        return math.nan
    return ((correct_sum.double() - confidence_sum.double()).abs().sum() / total).item()


def ece_from_predictions(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """ECE of max-probability confidence against argmax correctness; probs [N, C], labels [N]; nan if N == 0."""
    count = torch.zeros(bins, dtype=torch.int64, device=probs.device)
    confidence_sum = torch.zeros(bins, dtype=torch.float64, device=probs.device)
    correct_sum = torch.zeros(bins, dtype=torch.float64, device=probs.device)
    if probs.shape[0] > 0:
        confidence, predicted = probs.max(dim=1)
        calibration_update(count, confidence_sum, correct_sum, confidence, predicted == labels)
    return expected_calibration_error(count, confidence_sum, correct_sum)


def accuracy_by_uncertainty(uncertainty: torch.Tensor, correct: torch.Tensor, threshold: float) -> dict[str, dict]:
    """Accuracy of the samples at or below `threshold` ("low") and above it ("high"): {group: {count, accuracy}}.

    uncertainty, correct: [N]; a group without samples has accuracy nan.
    """
    uncertainty, correct = uncertainty.detach().cpu().double(), correct.detach().cpu().bool()
    groups = {"low": uncertainty <= threshold, "high": uncertainty > threshold}
    return {name: {"count": int(member.sum()),
                   "accuracy": float(correct[member].double().mean()) if member.any() else float("nan")}
            for name, member in groups.items()}


def rejection_curve(uncertainty: torch.Tensor, correct: torch.Tensor, points: int = 21) -> tuple[list[float], list[float]]:
    """Accuracy of what is kept when the most uncertain fraction f is rejected, for f = 0, 1/(points-1), ..., 1
    (the last point keeps nothing: nan). Ties in uncertainty are rejected in index order, deterministically.

    A score that ranks wrong predictions as more uncertain gives a curve rising from the plain accuracy.
    """
    uncertainty, correct = uncertainty.detach().cpu().double(), correct.detach().cpu().double()
    order = torch.argsort(uncertainty, stable=True)  # most certain first
    kept_correct = torch.cumsum(correct[order], dim=0)
    size, fractions, accuracies = len(order), [], []
    for step in range(points):
        fraction = step / (points - 1)
        kept = size - round(fraction * size)
        fractions.append(fraction)
        accuracies.append(float(kept_correct[kept - 1] / kept) if kept > 0 else float("nan"))
    return fractions, accuracies
