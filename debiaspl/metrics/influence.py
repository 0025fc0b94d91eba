"""TracIn (Pruthi et al., NeurIPS 2020) restricted to the last linear layer, in closed form: self-influence,
the influence of training samples on test samples (proponents and opponents), and clustering by TracIn
similarity; and the precision / recall of a ranking at k (how many planted mislabels the top-k finds).

TracInCP sums lr_i * grad loss(z; w_i) . grad loss(z'; w_i) over saved checkpoints i: the caller calls the
per-checkpoint functions here once per checkpoint (with its probs, features and learning rate) and adds
the results.
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


def last_layer_influence(probs_a: torch.Tensor, labels_a: torch.Tensor, features_a: torch.Tensor,
                         probs_b: torch.Tensor, labels_b: torch.Tensor, features_b: torch.Tensor,
                         learning_rate: float) -> torch.Tensor:
    """[N_a, N_b] float64 lr * <d CE(z_a) / d(W, b), d CE(z_b) / d(W, b)>, exactly, with no autograd.

    With residuals r = p - onehot(y) and inputs h of the last layer, each gradient is r [h; 1]^T, so the
    inner product is (r_a . r_b)(h_a . h_b + 1). Positive: a step on z_a lowers the loss of z_b (z_a is a
    proponent of z_b); negative: an opponent. The diagonal of (a, a) is last_layer_self_influence.
    """
    residual_a = probs_a.double() - F.one_hot(labels_a.long(), probs_a.shape[1]).double()
    residual_b = probs_b.double() - F.one_hot(labels_b.long(), probs_b.shape[1]).double()
    return learning_rate * (residual_a @ residual_b.T) * (features_a.double() @ features_b.double().T + 1.0)


def cluster_by_similarity(similarity: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """Cluster ids [N] (0 = the largest cluster) from a TracIn similarity (Gram) matrix [N, N].

    The similarity is normalised to a cosine, s_ij / sqrt(s_ii s_jj) (unit-normalised gradient vectors,
    as the TracIn post does), and 1 - cosine is the distance of an average-linkage agglomerative
    clustering (scikit-learn's). Samples with a zero gradient (s_ii = 0) get distance 1 to all others.
    """
    from sklearn.cluster import AgglomerativeClustering

    gram = similarity.double()
    size = gram.shape[0]
    if gram.shape != (size, size) or not 1 <= num_clusters <= size:
        raise ValueError(f"need a square [N, N] similarity and 1 <= num_clusters <= N, got {list(gram.shape)} "
                         f"and {num_clusters}")
    norms = gram.diagonal().clamp_min(0).sqrt()
    cosine = gram / (norms[:, None] * norms[None, :]).clamp_min(1e-300)
    distance = (1.0 - cosine).clamp(min=0.0, max=2.0)
    distance.fill_diagonal_(0.0)
    if num_clusters == 1:
        return torch.zeros(size, dtype=torch.long)
    found = AgglomerativeClustering(n_clusters=num_clusters, metric="precomputed", linkage="average").fit_predict(
        distance.numpy())
    # number clusters by size, largest first, ties by their first member, so ids do not depend on sklearn's order
    sizes = np.bincount(found, minlength=num_clusters)
    first = [int(np.flatnonzero(found == c)[0]) for c in range(num_clusters)]
    order = sorted(range(num_clusters), key=lambda c: (-sizes[c], first[c]))
    renumber = np.empty(num_clusters, dtype=np.int64)
    renumber[order] = np.arange(num_clusters)
    return torch.from_numpy(renumber[found])
