"""TracIn self-influence (Pruthi et al., NeurIPS 2020) restricted to the last linear layer, in closed form, and the
precision / recall of a ranking at k (how many planted mislabels the top-k self-influence finds).

TracInCP sums lr_i * ||grad loss(z; w_i)||^2 over saved checkpoints i: the caller calls
`last_layer_self_influence` once per checkpoint (with that checkpoint's probs, features and learning rate)
and adds the results.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F


def last_layer_self_influence(probs: torch.Tensor, labels: torch.Tensor, features: torch.Tensor,
                              learning_rate: float) -> torch.Tensor:
    """[N] float64 lr * ||d CE(W h + b, y) / d(W, b)||^2 of each sample, exactly, with no autograd.

    probs: [N, C] softmax of the last layer's logits W h + b; labels: [N]; features: [N, D] its inputs h.
    The per-sample gradient is (p - onehot(y)) h^T for W and p - onehot(y) for b, so its squared norm is
    ||p - onehot(y)||^2 (||h||^2 + 1). Accumulated in float64.
    """
    if not probs.shape[0] == labels.shape[0] == features.shape[0]:
        raise ValueError(f"probs {list(probs.shape)}, labels {list(labels.shape)} and features "
                         f"{list(features.shape)} must have the same number of samples")
    residual = probs.double() - F.one_hot(labels.long(), probs.shape[1]).double()
    feature_norm = features.double().square().sum(dim=1)
    return learning_rate * residual.square().sum(dim=1) * (feature_norm + 1.0)


def precision_recall_at_k(scores: torch.Tensor, is_positive: torch.Tensor, k: int) -> tuple[float, float]:
    """(precision@k, recall@k) of the ranking by scores [N], highest first, ties by the lower index, nan last.

    is_positive: [N] bool. precision@k = positives in the top k / k; recall@k = positives in the top k /
    all positives (nan when there are none). ValueError unless 1 <= k <= N.
    """
    values = scores.detach().cpu().double().numpy()
    positive = is_positive.detach().cpu().numpy().astype(bool)
    if not 1 <= k <= len(values):
        raise ValueError(f"k must lie in 1..{len(values)}, got {k}")
    missing = np.isnan(values)
    # np.lexsort sorts by the last key first: missing, then the negated score, then the index.
    order = np.lexsort((np.arange(len(values)), -np.where(missing, 0.0, values), missing))
    found = int(positive[order[:k]].sum())
    total = int(positive.sum())
    return found / k, (found / total if total else math.nan)
