"""Dataset Cartography (Swayamdipta et al., EMNLP 2020): per-sample confidence, variability, correctness and
forgetfulness (Toneva et al., ICLR 2019) from training dynamics, with allenai/cartography's conventions.

Numeric results are CPU torch tensors; `region_of` returns a numpy array of str (torch has no strings).
"""

import math

import numpy as np
import torch

NEVER_LEARNED = 1000  # allenai/cartography's forgetfulness of a sample never predicted right
REGIONS = ("easy-to-learn", "ambiguous", "hard-to-learn")
# The region boundaries of `region_of`, the data map's dashed lines and the share_* scalars (one source for all)
AMBIGUOUS_VARIABILITY = 0.2  # variability at or above: ambiguous
EASY_CONFIDENCE = 0.5        # below that variability, confidence at or above: easy-to-learn, else hard-to-learn
TD_METRICS_COLUMNS = ("guid", "index", "threshold_closeness", "confidence", "variability", "correctness",
                      "forgetfulness")


def training_dynamics_metrics(target_prob: torch.Tensor, correct: torch.Tensor) -> dict[str, torch.Tensor]:
    """Cartography metrics of N samples from E epochs of training dynamics.

    target_prob: [N, E] float, probability of the target label in each epoch, NaN = unobserved.
    correct: [N, E] int8, 1 = predicted right, 0 = wrong, -1 = unobserved (must agree with the NaNs).
    Returns a dict of [N] tensors over the observed epochs of each sample:
      confidence (float64): mean target probability;
      variability (float64): its population standard deviation (ddof = 0, np.std as in allenai);
      correctness (float64): fraction of epochs predicted right;
      correct_count (int64): number of epochs predicted right (allenai's "correctness" column);
      forgetfulness (int64): right -> wrong transitions between consecutive observed epochs, or 1000 for a
        sample never predicted right;
      threshold_closeness (float64): confidence * (1 - confidence);
      epochs_observed (int64).
    A sample with no observed epoch gets nan for the float metrics, 0 counts and forgetfulness 1000: it was
    never predicted right, exactly what allenai's `not any([])` gives; filter it with epochs_observed == 0.
    """
    target_prob, correct = torch.as_tensor(target_prob), torch.as_tensor(correct)
    if target_prob.shape != correct.shape or target_prob.dim() != 2:
        raise ValueError(f"target_prob and correct must both be [N, E], got {tuple(target_prob.shape)} and "
                         f"{tuple(correct.shape)}")
    observed = ~target_prob.isnan()
    if not torch.equal(observed, correct >= 0):
        raise ValueError("target_prob is NaN exactly where correct is -1 (unobserved); here they disagree")
    num_epochs = target_prob.shape[1]
    epochs_observed = observed.sum(dim=1)
    denominator = epochs_observed.double()  # 0 for an unobserved sample: 0 / 0 gives its nan

    probs = torch.where(observed, target_prob.double(), 0.0)
    confidence = probs.sum(dim=1) / denominator
    squared_deviation = torch.where(observed, (probs - confidence[:, None]) ** 2, 0.0)
    variability = (squared_deviation.sum(dim=1) / denominator).sqrt()

    right = correct == 1
    correct_count = right.sum(dim=1)

    # Forgetting event at epoch e: wrong at e, right at the previous *observed* epoch. The previous observed
    # epoch comes from a running max of observed epoch indices (-1 = none yet), shifted by one epoch.
    epoch_index = torch.arange(num_epochs).expand_as(observed)
    last_observed = torch.where(observed, epoch_index, -1).cummax(dim=1).values
    previous_observed = torch.cat([torch.full_like(last_observed[:, :1], -1), last_observed[:, :-1]], dim=1)
    right_before = right.gather(1, previous_observed.clamp(min=0)) & (previous_observed >= 0)
    forgetfulness = (observed & ~right & right_before).sum(dim=1)
    forgetfulness = torch.where(correct_count > 0, forgetfulness, NEVER_LEARNED)

    return {"confidence": confidence, "variability": variability,
            "correctness": correct_count / denominator, "correct_count": correct_count,
            "forgetfulness": forgetfulness, "threshold_closeness": confidence * (1 - confidence),
            "epochs_observed": epochs_observed}


def region_of(confidence: torch.Tensor, variability: torch.Tensor,
              ambiguous_variability: float = AMBIGUOUS_VARIABILITY, easy_confidence: float = EASY_CONFIDENCE) -> np.ndarray:
    """[N] region name of each sample on the data map, a display convention rather than the paper's method.

    The paper draws regions by eye; here: "ambiguous" if variability >= ambiguous_variability, otherwise
    "easy-to-learn" if confidence >= easy_confidence, otherwise "hard-to-learn"; "unobserved" if either is nan.
    """
    confidence, variability = np.asarray(confidence, dtype=float), np.asarray(variability, dtype=float)
    return np.select(
        [np.isnan(confidence) | np.isnan(variability), variability >= ambiguous_variability,
         confidence >= easy_confidence],
        ["unobserved", "ambiguous", "easy-to-learn"], default="hard-to-learn").astype(str)


def top_k(metric_name: str, metrics: dict[str, torch.Tensor], k: int, in_region: bool = False) -> torch.Tensor:
    """int64 indices [min(k, N)] of the samples most typical of region `metric_name`.

    "ambiguous": highest variability first; "hard-to-learn": lowest confidence first; "easy-to-learn":
    highest confidence first (allenai's rankings). nan values come last, ties are broken by the lower
    index. `in_region`: only samples the data map puts in that region (region_of), so that the lowest
    confidences, often highly variable, do not show as hard-to-learn what the map calls ambiguous.
    """
    keys = {"ambiguous": ("variability", -1.0), "hard-to-learn": ("confidence", 1.0),
            "easy-to-learn": ("confidence", -1.0)}
    if metric_name not in keys:
        raise ValueError(f"unknown region {metric_name!r}; expected one of {', '.join(REGIONS)}")
    name, sign = keys[metric_name]
    values = np.asarray(metrics[name], dtype=np.float64)
    missing = np.isnan(values)
    # np.lexsort sorts by the last key first: missing, then the signed value, then the index.
    order = np.lexsort((np.arange(len(values)), sign * np.where(missing, 0.0, values), missing))
    if in_region:
        order = order[region_of(metrics["confidence"], metrics["variability"])[order] == metric_name]
    return torch.from_numpy(order[:max(k, 0)].astype(np.int64))


def _json_float(value: float) -> float | None:
    """nan -> None so records serialise to valid JSON (null, as pandas' to_json writes in allenai)."""
    value = float(value)
    return None if math.isnan(value) else value


def td_metrics_records(guids: list[str], metrics: dict[str, torch.Tensor]) -> list[dict]:
    """One dict per sample with exactly allenai's td_metrics.jsonl columns, in its order.

    guid, index (position in `guids`), threshold_closeness, confidence, variability (floats, None for nan),
    correctness (int: number of epochs predicted right, the sum allenai stores), forgetfulness (int).
    """
    if len(guids) != len(metrics["confidence"]):
        raise ValueError(f"{len(guids)} guids for {len(metrics['confidence'])} samples")
    columns = [metrics[name].tolist() for name in ("threshold_closeness", "confidence", "variability",
                                                    "correct_count", "forgetfulness")]
    return [dict(zip(TD_METRICS_COLUMNS, (guid, index, _json_float(closeness), _json_float(confidence),
                                          _json_float(variability), int(count), int(forgotten))))
            for index, (guid, closeness, confidence, variability, count, forgotten)
            in enumerate(zip(guids, *columns))]
