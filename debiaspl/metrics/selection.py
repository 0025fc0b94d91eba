"""Active-learning acquisition over an unlabeled pool: which samples to label next. Uncertainty sampling (least
confidence, Lewis & Gale 1994; margin, Scheffer et al. 2001; entropy), BALD (Houlsby et al. 2011), cartography
ambiguity (Swayamdipta et al. 2020), TracIn self-influence (Pruthi et al. 2020), and a class-balanced top-k
that favours the tail classes under DebiasPL's class marginal q_hat (Wang et al., CVPR 2022).

Higher score = select first. Indices are int64 on the scores' device.
"""

from fractions import Fraction

import numpy as np
import torch

from debiaspl.metrics.uncertainty import normalized_entropy

STRATEGIES = ("least_confidence", "margin", "entropy", "bald", "random", "ambiguity", "self_influence")


def _require(strategy: str, name: str, value):
    if value is None:
        raise ValueError(f"strategy {strategy!r} needs {name}")
    return value


def acquisition_scores(strategy: str, *, probs: torch.Tensor | None = None,
                       mutual_information: torch.Tensor | None = None, variability: torch.Tensor | None = None,
                       self_influence: torch.Tensor | None = None, generator: torch.Generator | None = None,
                       num_samples: int | None = None) -> torch.Tensor:
    """[N] acquisition score of each pool sample under `strategy` (one of STRATEGIES), higher = select first.

    least_confidence: 1 - max_c p_c; margin: -(p_top1 - p_top2) (needs C >= 2); entropy: H(p) / log C;
    all three from probs [N, C]. bald: mutual_information [N] (MC Dropout, see predictive.py); ambiguity:
    cartography variability [N]; self_influence: TracIn self-influence [N] (see influence.py); these are
    returned as copies. random: uniform in [0, 1) drawn from `generator` (never the global RNG), for
    num_samples samples or, without it, probs.shape[0]. ValueError names a missing input.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    if strategy in ("least_confidence", "margin", "entropy"):
        probs = _require(strategy, "probs", probs)
        probs = probs.to(torch.promote_types(probs.dtype, torch.float32))
        if strategy == "least_confidence":
            return 1.0 - probs.max(dim=1).values
        if strategy == "entropy":
            return normalized_entropy(probs)
        if probs.shape[1] < 2:
            raise ValueError(f"strategy 'margin' needs at least 2 classes, got {probs.shape[1]}")
        top_two = probs.topk(2, dim=1).values
        return top_two[:, 1] - top_two[:, 0]
    if strategy == "random":
        generator = _require(strategy, "generator", generator)
        if num_samples is None:
            num_samples = _require(strategy, "num_samples (or probs, for its N)", probs).shape[0]
        elif probs is not None and probs.shape[0] != num_samples:
            raise ValueError(f"num_samples = {num_samples} but probs has {probs.shape[0]} rows")
        return torch.rand(num_samples, generator=generator, device=generator.device)
    given = {"bald": ("mutual_information", mutual_information), "ambiguity": ("variability", variability),
             "self_influence": ("self_influence", self_influence)}
    name, value = given[strategy]
    return _require(strategy, name, value).clone()


def _ranking(scores: torch.Tensor) -> np.ndarray:
    """int64 [N] order: highest score first, ties by lower index, nan last."""
    values = scores.detach().cpu().double().numpy()
    missing = np.isnan(values)
    # np.lexsort sorts by the last key first: missing, then the negated score, then the index.
    return np.lexsort((np.arange(len(values)), -np.where(missing, 0.0, values), missing))


def select_top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """int64 indices [k] of the k highest scores [N], highest first, ties by the lower index.

    nan is never selected (ValueError if fewer than k scores are not nan); +-inf rank as the extremes they are.
    """
    available = int((~scores.isnan()).sum())
    if k < 0 or k > available:
        raise ValueError(f"cannot select {k} samples from {available} scores that are not nan")
    return torch.from_numpy(_ranking(scores)[:k].copy()).to(scores.device)


def _largest_remainder(total: int, weights: list[Fraction]) -> list[int]:
    """Split `total` seats in proportion to `weights` (sum > 0): floors, then one more seat to each of the
    largest remainders, ties by the lower index (Hamilton's method). Exact rational arithmetic."""
    weight_sum = sum(weights)
    shares = [total * weight / weight_sum for weight in weights]
    seats = [int(share) for share in shares]  # floor: the shares are >= 0
    by_remainder = sorted(range(len(weights)), key=lambda c: (-(shares[c] - seats[c]), c))
    for c in by_remainder[:total - sum(seats)]:
        seats[c] += 1
    return seats


def class_quotas(pool_sizes: torch.Tensor, class_weights: torch.Tensor, k: int) -> torch.Tensor:
    """int64 [C] number of samples to take from each class: k split in proportion to class_weights [C].

    Largest-remainder rounding; a quota above the class's pool size [C] is capped there, and the leftover is
    split again by the same rule among the classes with samples left, until all k are placed. A class of
    weight 0 gets samples only once every class of positive weight is exhausted (then the rest is split
    equally among the classes left). ValueError if the pools hold fewer than k samples.
    """
    sizes = [int(size) for size in pool_sizes.tolist()]
    weights = [float(weight) for weight in class_weights.tolist()]
    if len(sizes) != len(weights):
        raise ValueError(f"{len(sizes)} pool sizes for {len(weights)} class weights")
    if any(not weight >= 0 for weight in weights) or any(weight == float("inf") for weight in weights):
        raise ValueError(f"class weights must be finite and >= 0, got {weights}")
    if k < 0 or k > sum(sizes):
        raise ValueError(f"cannot select {k} samples from pools of {sum(sizes)}")
    quotas, remaining = [0] * len(sizes), k
    while remaining > 0:
        is_open = [quota < size for quota, size in zip(quotas, sizes)]
        open_weights = [Fraction(weight) if open_ else Fraction(0) for weight, open_ in zip(weights, is_open)]
        if sum(open_weights) == 0:
            open_weights = [Fraction(int(open_)) for open_ in is_open]
        # Every round places at least one seat (all of them unless some class is capped), so this ends.
        for c, seats in enumerate(_largest_remainder(remaining, open_weights)):
            placed = min(seats, sizes[c] - quotas[c])
            quotas[c] += placed
            remaining -= placed
    return torch.tensor(quotas, dtype=torch.int64)


def select_class_balanced(scores: torch.Tensor, predicted: torch.Tensor, class_weights: torch.Tensor,
                          k: int) -> torch.Tensor:
    """int64 indices [k]: the top-scored samples of each predicted class, k spread by `class_quotas`.

    scores [N] (nan never selected, so not counted in a class's pool), predicted [N] class indices,
    class_weights [C]. The result is sorted by score, highest first, ties by the lower index. With
    class_weights = inverse_marginal_weights(q_hat) the classes DebiasPL sees least get the largest quotas.
    """
    num_classes = class_weights.shape[0]
    predicted = predicted.detach().cpu().long()
    if predicted.shape != scores.shape:
        raise ValueError(f"predicted is {list(predicted.shape)} for scores {list(scores.shape)}")
    if len(predicted) and (predicted.min() < 0 or predicted.max() >= num_classes):
        raise ValueError(f"predicted classes must lie in 0..{num_classes - 1}")
    valid = ~scores.detach().cpu().isnan()
    quotas = class_quotas(torch.bincount(predicted[valid], minlength=num_classes), class_weights, k)
    order = torch.from_numpy(_ranking(scores))
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    # Walking `order` (by score, then index), a class's first entries are its top-scored samples.
    chosen = [order[(predicted[order] == c) & valid[order]][:quotas[c]] for c in range(num_classes)]
    chosen = torch.cat(chosen) if chosen else torch.zeros(0, dtype=torch.int64)
    return chosen[torch.argsort(rank[chosen])].to(scores.device)


def inverse_marginal_weights(class_marginal: torch.Tensor) -> torch.Tensor:
    """[C] float64 weights proportional to 1 / q_hat_c (q_hat floored at 1e-12), normalised to sum 1."""
    inverse = 1.0 / class_marginal.double().clamp(min=1e-12)
    return inverse / inverse.sum()
