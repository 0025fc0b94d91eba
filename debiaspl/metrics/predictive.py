"""Test-set predictive quality (NLL, Brier score) and MC Dropout uncertainty (Gal & Ghahramani, ICML 2016):
predictive entropy, expected entropy and their gap, the mutual information of BALD (Houlsby et al. 2011).

The caller runs the T stochastic forward passes (dropout on); these functions only see their probabilities.
Entropies are in nats, with 0 log 0 = 0; the *_normalized versions divide by log C (zeros when C == 1).
"""

import math

import torch
import torch.nn.functional as F


def negative_log_likelihood(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean cross-entropy -log p_y of logits [N, C] against labels [N], in nats; nan if N == 0.

    Computed from log_softmax in float64, so a confidently wrong sample costs its full (large, finite) loss
    rather than log(0) = inf.
    """
    if logits.shape[0] == 0:
        return math.nan
    return F.cross_entropy(logits.double(), labels.long()).item()


def brier_score(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over samples of sum_c (p_c - onehot(y)_c)^2 for probs [N, C], labels [N]; in [0, 2]; nan if N == 0."""
    if probs.shape[0] == 0:
        return math.nan
    onehot = F.one_hot(labels.long(), probs.shape[1]).double()
    return (probs.double() - onehot).square().sum(dim=1).mean().item()


def _entropy(probs: torch.Tensor) -> torch.Tensor:
    """[..., C] -> [...] entropy in nats, 0 log 0 = 0."""
    return -torch.special.xlogy(probs, probs).sum(dim=-1)


def _scores(mean_probs: torch.Tensor, expected_entropy: torch.Tensor, variance: torch.Tensor) -> dict:
    """The result dict from the per-sample mean [N, C], mean per-pass entropy [N] and class-mean variance [N]."""
    num_classes = mean_probs.shape[1]
    predictive_entropy = _entropy(mean_probs)
    # PE >= EE by concavity of H (Jensen); rounding can put the gap a hair below 0.
    mutual_information = (predictive_entropy - expected_entropy).clamp(min=0.0)
    scores = {"mean_probs": mean_probs, "predictive_entropy": predictive_entropy,
              "expected_entropy": expected_entropy, "mutual_information": mutual_information, "variance": variance}
    log_classes = math.log(num_classes) if num_classes > 1 else math.inf  # one class: no uncertainty, zeros
    for name in ("predictive_entropy", "expected_entropy", "mutual_information"):
        scores[f"{name}_normalized"] = scores[name] / log_classes
    return scores


def predictive_scores(stacked_probs: torch.Tensor) -> dict[str, torch.Tensor]:
    """MC Dropout scores from all T passes at once: stacked_probs [T, N, C] -> dict of float64 tensors.

    mean_probs [N, C]: p_bar = mean_t p_t. [N] each: predictive_entropy H(p_bar); expected_entropy
    mean_t H(p_t); mutual_information PE - EE clamped at 0 (BALD); variance: the mean over classes of the
    population variance (divide by T) of p_c over the passes; *_normalized: the three entropies / log C.
    T == 0 gives nan. The reference for `MCDropoutAccumulator`, and enough when T x N x C fits in memory.
    """
    stacked_probs = stacked_probs.double()
    mean_probs = stacked_probs.mean(dim=0)
    expected_entropy = _entropy(stacked_probs).mean(dim=0)
    variance = stacked_probs.var(dim=0, correction=0).mean(dim=1)
    return _scores(mean_probs, expected_entropy, variance)


class MCDropoutAccumulator:
    """Streams T stochastic passes without keeping them: per sample sums of p, of p^2 and of the entropy of each pass.

    Passes and batches may arrive in any order (and samples may get different numbers of passes); each
    sample's count of passes is kept, and `result` divides by it. Sums are float64 on `device`, so memory is
    O(N x C) whatever T is; `add` does no host sync and may be called per batch.
    """

    def __init__(self, num_samples: int, num_classes: int, device=None):
        self.num_samples, self.num_classes = num_samples, num_classes
        self.prob_sum = torch.zeros(num_samples, num_classes, dtype=torch.float64, device=device)
        self.prob_square_sum = torch.zeros_like(self.prob_sum)
        self.entropy_sum = torch.zeros(num_samples, dtype=torch.float64, device=device)
        self.num_passes = torch.zeros(num_samples, dtype=torch.int64, device=device)

    def add(self, start: int, probs: torch.Tensor) -> None:
        """Add one pass's probabilities [b, C] of samples start .. start + b - 1."""
        if probs.dim() != 2 or probs.shape[1] != self.num_classes:
            raise ValueError(f"probs must be [b, {self.num_classes}], got {list(probs.shape)}")
        stop = start + probs.shape[0]
        if start < 0 or stop > self.num_samples:
            raise ValueError(f"samples {start}..{stop - 1} are outside 0..{self.num_samples - 1}")
        probs = probs.to(self.prob_sum.device, torch.float64)
        self.prob_sum[start:stop] += probs
        self.prob_square_sum[start:stop] += probs.square()
        self.entropy_sum[start:stop] += _entropy(probs)
        self.num_passes[start:stop] += 1

    def result(self) -> dict[str, torch.Tensor]:
        """The dict of `predictive_scores` (same keys, float64) plus num_passes [N]; nan for samples never seen.

        The variance is E[p^2] - E[p]^2 per class (population variance), clamped at 0 against rounding.
        """
        count = self.num_passes.double()
        mean_probs = self.prob_sum / count[:, None]
        variance = (self.prob_square_sum / count[:, None] - mean_probs.square()).clamp(min=0.0).mean(dim=1)
        scores = _scores(mean_probs, self.entropy_sum / count, variance)
        scores["num_passes"] = self.num_passes.clone()
        return scores
