"""`debiaspl debias-logits`: zero-shot DebiasPL over a file of precomputed logits (CLIP's, say).

Reads logits.npy [N, C] memory-mapped, debiases it batch by batch (algorithm.zero_shot), writes the
debiased pseudo-labels and confidences (and the plain argmax ones, for comparison) to an .npz, and,
with labels given, measures both against them.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch

from debiaspl.algorithm.zero_shot import debias_logit_stream
from debiaspl.metrics.distribution import imbalance_ratio, kl_divergence
from debiaspl.metrics.classification import balanced_accuracy, per_class_accuracy
from debiaspl.errors import UserError
from debiaspl.files import write_json, write_text


def debias_logits_file(logits_path: Path, *, tau: float, momentum: float, batch_size: int = 256,
                       labels_path: Path | None = None, threshold: float | None = None, seed: int | None = 0,
                       passes: int = 1, out: Path | None = None) -> tuple[dict, Path]:
    """Debias the logits in `logits_path`; returns (summary, path of the .npz written).

    seed None streams the rows in file order; otherwise in a random order drawn with this seed.
    passes 2: a first pass only estimates q_hat, the second starts from it, so the first batches are
    debiased as much as the last.
    """
    if passes not in (1, 2):
        raise UserError(f"--passes {passes}: must be 1 or 2")
    if not math.isfinite(tau) or tau < 0:  # nan passes a plain `tau < 0` and would make every label nan
        raise UserError(f"--tau {tau}: must be a finite number >= 0")
    if not 0 <= momentum < 1:
        raise UserError(f"--momentum {momentum}: must be in [0, 1)")
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: must be at least 1")
    if threshold is not None and not 0 <= threshold <= 1:
        raise UserError(f"--threshold {threshold}: must be in [0, 1]")
    logits = _load_array(logits_path, "logits")
    # real numbers only: np.number also admits complex, whose imaginary part torch's .float() would drop with
    # a warning; bool is not np.number either, so strings, objects and bools are refused here too
    real = np.issubdtype(logits.dtype, np.integer) or np.issubdtype(logits.dtype, np.floating)
    if logits.ndim != 2 or logits.shape[1] < 2 or logits.shape[0] < 1 or not real:
        raise UserError(f"{logits_path}: expected real-valued (integer or float) logits of shape [N, C] with C >= 2, "
                        f"got {logits.dtype} of shape {logits.shape}")
    _check_finite(logits, logits_path, batch_size)
    num_samples, num_classes = logits.shape
    labels = None
    if labels_path is not None:
        labels = _load_array(labels_path, "labels")
        if labels.shape != (num_samples,) or not np.issubdtype(labels.dtype, np.integer):
            raise UserError(f"{labels_path}: expected integer labels of shape [{num_samples}] to match the logits, "
                            f"got {labels.dtype} of shape {labels.shape}")
        labels = torch.as_tensor(np.array(labels), dtype=torch.int64)  # a copy: the map is read-only
        if labels.min() < 0 or labels.max() >= num_classes:
            raise UserError(f"{labels_path}: labels must lie in 0..{num_classes - 1}, found {labels.min()}..{labels.max()}")

    initial_marginal = None
    for _ in range(passes):
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        debiased = debias_logit_stream(logits, tau, momentum, batch_size, generator, initial_marginal)
        if debiased.class_marginal.isnan().any():
            raise UserError(f"{logits_path}: the logits contain nan or inf")
        initial_marginal = debiased.class_marginal

    batches = math.ceil(num_samples / batch_size)
    summary = {"logits": str(logits_path), "samples": num_samples, "classes": num_classes, "tau": tau,
               "momentum": momentum, "batch_size": batch_size, "batches": batches,
               "order": "file order" if seed is None else f"random, seed {seed}", "passes": passes,
               "class_marginal": debiased.class_marginal.tolist(),
               "before": _describe(debiased.plain_labels, debiased.plain_confidence, labels, num_classes, threshold),
               "after": _describe(debiased.labels, debiased.confidence, labels, num_classes, threshold)}
    if batches * passes < 1 / (1 - momentum):
        summary["note"] = (f"only {batches * passes} q_hat updates ({batches} batches x {passes} pass(es)) against "
                           f"a momentum window of about {1 / (1 - momentum):.0f}: q_hat stays close to where it "
                           f"started and debiases little; lower --momentum or --batch-size, or use --passes 2")
    out = out if out is not None else logits_path.with_suffix(".debiased.npz")
    try:
        _write_npz(out, pseudo_label=debiased.labels.numpy(), confidence=debiased.confidence.numpy(),
                   plain_label=debiased.plain_labels.numpy(), plain_confidence=debiased.plain_confidence.numpy(),
                   class_marginal=debiased.class_marginal.numpy())
        write_json(out.with_suffix(".json"), summary)
    except OSError as exc:
        raise UserError(f"cannot write {out} (--out): {exc}") from None
    return summary, out


def _describe(predicted: torch.Tensor, confidence: torch.Tensor, labels: torch.Tensor | None, num_classes: int,
              threshold: float | None) -> dict:
    histogram = torch.bincount(predicted, minlength=num_classes)
    result = {"predicted_imbalance_ratio": imbalance_ratio(histogram), "mean_confidence": confidence.mean().item()}
    confident = confidence >= threshold if threshold is not None else None
    if confident is not None:
        result["confident_fraction"] = confident.float().mean().item()
    if labels is not None:
        correct = (predicted == labels).float()
        result.update({"accuracy": correct.mean().item(),
                       "balanced_accuracy": balanced_accuracy(per_class_accuracy(predicted, labels, num_classes)),
                       "kl_to_true": kl_divergence(histogram, torch.bincount(labels, minlength=num_classes))})
        if confident is not None:
            result["accuracy_confident"] = correct[confident].mean().item() if confident.any() else math.nan
    return result


FINITE_CHECK_BLOCK = 1 << 24  # values read at a time when checking the logits for nan and inf (64 MB of float32)


def _check_finite(logits: np.ndarray, path: Path, batch_size: int) -> None:
    """Refuse nan or inf anywhere in the logits, reading a memory-mapped file a block of rows at a time."""
    if not np.issubdtype(logits.dtype, np.floating):
        return  # integers are always finite
    rows = max(batch_size, FINITE_CHECK_BLOCK // logits.shape[1])  # memory stays bounded, calls stay few
    for start in range(0, logits.shape[0], rows):
        block = logits[start:start + rows]
        if not np.isfinite(block).all():
            bad = np.argwhere(~np.isfinite(block))[0]
            raise UserError(f"{path}: the logits must be finite, but row {start + bad[0]}, column {bad[1]} "
                            f"is {block[bad[0], bad[1]]}")


def _load_array(path: Path, what: str) -> np.ndarray:
    if not path.is_file():
        raise UserError(f"{path}: no such file ({what}: a .npy array)")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise UserError(f"{path}: not a readable .npy array ({exc})") from None
    if not isinstance(array, np.ndarray):  # an .npz archive loads as a mapping of arrays
        raise UserError(f"{path}: an .npz archive; save the {what} alone with np.save(path, array)")
    if not array.dtype.isnative:  # torch reads only the machine's byte order; this costs one copy in memory
        array = array.astype(array.dtype.newbyteorder("="))
    return array


def _write_npz(path: Path, **arrays: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_text(path, buffer.getvalue())
