"""Long-tailed labeled/unlabeled splits as used by DARP, DASO, ACR and USB (pure numpy).

Class k of C gets n_k = int(N1 * gamma ** (-k / (C - 1))) images: N1 for the head class, N1 / gamma
for the tail class. A negative gamma gives the same counts in reversed class order.
"""

import numpy as np


def long_tail_counts(head: int, imbalance: float, num_classes: int) -> list[int]:
    """Per-class counts [C] for head count N1 and imbalance ratio gamma (|gamma| >= 1)."""
    if abs(imbalance) < 1:
        raise ValueError(f"imbalance ratio must satisfy |gamma| >= 1, got {imbalance}")
    if num_classes == 1:
        return [int(head)]
    gamma = abs(imbalance)
    counts = [int(head * gamma ** (-k / (num_classes - 1))) for k in range(num_classes)]
    return counts[::-1] if imbalance < 0 else counts


def split_labeled_unlabeled(labels: np.ndarray, labeled_counts: list[int], unlabeled_counts: list[int] | None,
                            seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint per-class draws from a labeled pool.

    labels: [N] int class ids of the pool. unlabeled_counts None means every image of the pool
    not drawn as labeled is unlabeled. Returns (labeled indices, unlabeled indices), each sorted by
    class, then in the random order of the draw. Raises ValueError naming the class that has too
    few images.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    labeled, unlabeled = [], []
    for cls, n_lb in enumerate(labeled_counts):
        pool = rng.permutation(np.flatnonzero(labels == cls))
        n_ulb = len(pool) - n_lb if unlabeled_counts is None else unlabeled_counts[cls]
        if n_lb + n_ulb > len(pool) or n_ulb < 0:
            raise ValueError(f"class {cls} has {len(pool)} images, fewer than the {n_lb} labeled + "
                             f"{max(n_ulb, 0)} unlabeled requested")
        labeled.append(pool[:n_lb])
        unlabeled.append(pool[n_lb:n_lb + n_ulb])
    return np.concatenate(labeled).astype(np.int64), np.concatenate(unlabeled).astype(np.int64)
