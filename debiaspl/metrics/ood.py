"""Out-of-distribution detection from a classifier's outputs: maximum softmax probability (Hendrycks & Gimpel,
ICLR 2017), maximum logit (Hendrycks et al., ICML 2022), free energy (Liu et al., NeurIPS 2020), entropy and
MC Dropout mutual information, with AUROC, AUPR and FPR at 95% TPR. Every score is oriented so that higher
means more likely out-of-distribution; OOD is the positive class.
"""

import math

import numpy as np
import torch

from debiaspl.metrics.plots import _figure, _numpy
from debiaspl.metrics.uncertainty import normalized_entropy


def ood_scores(logits: torch.Tensor, mutual_information: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """[N, C] logits -> dict of [N] scores, higher = more likely OOD.

    msp: -max_c softmax; max_logit: -max_c f_c; energy: the free energy E(x) = -T log sum_c exp(f_c / T) at
    T = 1, i.e. -logsumexp (in-distribution inputs get low energy); entropy: H(softmax) / log C;
    mutual_information: the given MC Dropout MI [N] (BALD), only when given.
    Computed in at least float32 (float64 logits stay float64); entropy is float32 as in `normalized_entropy`.
    """
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    probs = logits.softmax(dim=1)
    scores = {"msp": -probs.max(dim=1).values, "max_logit": -logits.max(dim=1).values,
              "energy": -logits.logsumexp(dim=1), "entropy": normalized_entropy(probs)}
    if mutual_information is not None:
        if mutual_information.shape != (logits.shape[0],):
            raise ValueError(f"mutual_information must be [{logits.shape[0]}], got {list(mutual_information.shape)}")
        scores["mutual_information"] = mutual_information.clone()
    return scores


def fpr_at_tpr(scores_in: np.ndarray, scores_out: np.ndarray, tpr_percent: int = 95) -> float:
    """Fraction of in-distribution scores >= t, for t the largest threshold that flags tpr_percent% of OOD.

    With m = ceil(tpr_percent * N_out / 100) (integer arithmetic, so 0.95 * 20 is exactly 19), t is the m-th
    largest OOD score: at least m OOD scores are >= t and no larger threshold keeps m. A sample is flagged
    OOD when its score >= t, so in-distribution ties with t count as false positives. nan if either is empty.
    """
    if len(scores_in) == 0 or len(scores_out) == 0:
        return math.nan
    needed = -(-tpr_percent * len(scores_out) // 100)
    threshold = np.sort(scores_out)[::-1][needed - 1]
    return float(np.mean(scores_in >= threshold))


def detection_metrics(scores_in: torch.Tensor, scores_out: torch.Tensor) -> dict[str, float]:
    """auroc, aupr_out, aupr_in, fpr_at_95_tpr of one score: scores_in [N_in], scores_out [N_out].

    OOD is the positive class. auroc: sklearn roc_auc_score (1 = every OOD sample above every ID sample,
    ties count 1/2); aupr_out: average_precision_score with OOD positive; aupr_in: the same with ID positive
    and the scores negated; fpr_at_95_tpr: see `fpr_at_tpr`. All nan when either set is empty; a nan score
    is an error (it has no place in the ranking).
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    names = ("auroc", "aupr_out", "aupr_in", "fpr_at_95_tpr")
    scores_in, scores_out = _numpy(scores_in).reshape(-1), _numpy(scores_out).reshape(-1)
    if len(scores_in) == 0 or len(scores_out) == 0:
        return dict.fromkeys(names, math.nan)
    for label, values in (("scores_in", scores_in), ("scores_out", scores_out)):
        if np.isnan(values).any():
            raise ValueError(f"{label} contains nan")
    scores = np.concatenate([scores_in, scores_out])
    is_out = np.concatenate([np.zeros(len(scores_in)), np.ones(len(scores_out))])
    return {"auroc": float(roc_auc_score(is_out, scores)),
            "aupr_out": float(average_precision_score(is_out, scores)),
            "aupr_in": float(average_precision_score(1 - is_out, -scores)),
            "fpr_at_95_tpr": fpr_at_tpr(scores_in, scores_out, 95)}


def score_histogram_figure(scores_in: dict[str, torch.Tensor], scores_out: dict[str, torch.Tensor], title: str):
    """One subplot per score name: step histograms of the in- and out-of-distribution scores [N] on shared bins.

    Each histogram is normalised to fractions of its own set (the sets differ in size); the subplot title
    gives the AUROC. Both dicts must have the same names; nan values are left out of the histograms.
    """
    if set(scores_in) != set(scores_out):
        raise ValueError(f"score names differ: in {sorted(scores_in)}, out {sorted(scores_out)}")
    if not scores_in:
        raise ValueError("no scores to draw")
    columns = min(3, len(scores_in))
    rows = -(-len(scores_in) // columns)
    figure = _figure(figsize=(4.5 * columns, 3.5 * rows))
    for position, name in enumerate(scores_in, start=1):
        values_in, values_out = _numpy(scores_in[name]).reshape(-1), _numpy(scores_out[name]).reshape(-1)
        values_in, values_out = values_in[~np.isnan(values_in)], values_out[~np.isnan(values_out)]
        auroc = detection_metrics(torch.from_numpy(values_in), torch.from_numpy(values_out))["auroc"]
        axes = figure.add_subplot(rows, columns, position)
        finite = np.concatenate([values_in, values_out])
        finite = finite[np.isfinite(finite)]
        if len(finite):
            low, high = finite.min(), finite.max()
            edges = np.linspace(low, high, 41) if high > low else np.array([low - 0.5, high + 0.5])
            for values, label, colour in ((values_in, "in-distribution", "tab:blue"),
                                          (values_out, "out-of-distribution", "tab:red")):
                if len(values):
                    axes.hist(np.clip(values, edges[0], edges[-1]), bins=edges, histtype="step", linewidth=1.5,
                              color=colour, label=label, weights=np.full(len(values), 1.0 / len(values)))
            axes.legend(fontsize=8)
        axes.set_xlabel(f"{name} (higher = more OOD)")
        axes.set_ylabel("fraction of samples")
        axes.set_title(f"{name}: AUROC = {auroc:.3f}")
    figure.suptitle(title)
    figure.tight_layout()
    return figure
