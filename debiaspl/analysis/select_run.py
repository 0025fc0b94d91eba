"""`debiaspl select`: which unlabeled images a person should label next, as a CSV for annotators.

Scores the run's unlabeled set with an acquisition strategy (debiaspl.metrics.selection), takes
the top k (optionally spread over predicted classes with quotas proportional to 1 / q_hat, so tail
classes get their share), and writes rank, sample_id, score, predicted class and an empty `label`
column. Filled in, the file goes back into the next experiment as `data.label_file`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from debiaspl.analysis.evaluate_run import mc_dropout_scores
from debiaspl.inference import predict_logits
from debiaspl.analysis.influence_run import self_influence
from debiaspl.analysis.load_run import LoadedRun, cartography_metric
from debiaspl.metrics.selection import (acquisition_scores, inverse_marginal_weights, select_class_balanced,
                                         select_top_k)
from debiaspl.files import write_csv
from debiaspl.metrics.gallery import entries_from, split_rows, write_gallery
from debiaspl.errors import UserError


SELECTION_GALLERY_SIZE = 30  # picks drawn beside the CSV, ten a row


def select_samples(run: LoadedRun, strategy: str, k: int, *, balance: bool = False, mc_passes: int = 20,
                   seed: int = 0, oracle: bool = False, batch_size: int = 256, out: Path | None = None) -> Path:
    """Write the selection CSV and return its path. `oracle` fills `label` with the hidden truth (simulations)."""
    pool = run.data.unlabeled
    if not 0 < k <= len(pool.labels):
        raise UserError(f"--k {k}: must be between 1 and the unlabeled pool's {len(pool.labels)} images")
    logits = predict_logits(run.model, pool.images, run.mean, run.std, batch_size, run.device)
    probs = torch.softmax(logits, dim=1)
    inputs = {"probs": probs}
    if strategy == "bald":
        if run.config.model.dropout == 0:
            raise UserError("--strategy bald needs MC Dropout: train with --set model.dropout=0.3 (for example)")
        inputs["mutual_information"] = mc_dropout_scores(run, pool.images, mc_passes, batch_size, seed)["mutual_information"]
    elif strategy == "ambiguity":
        inputs["variability"] = cartography_metric(run, "unlabeled", "variability", "--strategy ambiguity")
    elif strategy == "self_influence":
        inputs["self_influence"] = self_influence(run, split="unlabeled", batch_size=batch_size, write=False)["last_layer"]
    elif strategy == "random":
        inputs["generator"] = torch.Generator().manual_seed(seed)
    scores = acquisition_scores(strategy, **inputs)
    predicted = run.algorithm.pseudo_labels(logits, run.algorithm_state).labels  # the run's pseudo-label
    try:
        if balance:
            chosen = select_class_balanced(scores, predicted, inverse_marginal_weights(run.class_marginal), k)
        else:
            chosen = select_top_k(scores, k)
    except ValueError as exc:  # e.g. fewer than k images with a score (a cartography map of a short run)
        raise UserError(f"--strategy {strategy} --k {k}: {exc}") from None
    names = run.data.class_names
    columns = {
        "rank": list(range(1, len(chosen) + 1)),
        "sample_id": [pool.sample_ids[i] for i in chosen],
        "score": scores[chosen].double().tolist(),
        "predicted": [names[int(predicted[i])] for i in chosen],
        "label": [names[int(pool.labels[i])] if oracle else "" for i in chosen],
    }
    path = out or run.run_dir / "selection" / f"{strategy}{'_balanced' if balance else ''}_k{k}.csv"
    write_csv(path, columns)
    shown = chosen[:SELECTION_GALLERY_SIZE]
    rows = split_rows(entries_from(pool.images, shown, pool.sample_ids, names, labels=pool.labels if oracle else None,
                                   pseudo_labels=predicted, scores=scores, score_name=strategy), what="picks")
    write_gallery(path.with_name(path.stem + "_gallery"), rows,
                  f"{strategy}{' (class-balanced)' if balance else ''}: the first {len(shown)} of {len(chosen)} picks "
                  f"(pseudo: the run's pseudo-label{'; label: the hidden truth' if oracle else ''})")
    return path
