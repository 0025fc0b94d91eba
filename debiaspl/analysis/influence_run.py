"""`debiaspl influence`: TracIn self-influence (Pruthi et al. 2020) of each sample, over a run's snapshots.

Self-influence sum_t lr_t * ||grad_w loss(x, y; w_t)||^2 is large for samples the model keeps
having to fit against its own inclination: mislabeled or atypical ones. Two forms: the exact
last-layer one from penultimate features, and the full per-sample gradient of chosen layers
(torch.func). Both on un-augmented images with BatchNorm in eval mode.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from debiaspl.inference import predict_logits
from debiaspl.metrics.gallery import GalleryRow, entries_from, write_gallery
from debiaspl.metrics.influence import last_layer_self_influence
from debiaspl.analysis.load_run import LoadedRun, load_snapshot
from debiaspl.files import write_csv
from debiaspl.data.loaders import to_model_input
from debiaspl.errors import UserError
from debiaspl.run_folder import list_snapshots


def self_influence(run: LoadedRun, *, split: str = "labeled", layers: tuple[str, ...] = (),
                   batch_size: int = 256, write: bool = True, gallery_size: int = 16) -> dict[str, torch.Tensor]:
    """Per-sample self-influence summed over the run's snapshots.

    split "labeled": the training labels; "unlabeled": the pseudo-label the run's algorithm would train
    on at each snapshot (under DebiasPL the debiased argmax, with the adaptive margin in the loss).
    Returns last_layer [N], full_gradient [N] when `layers` names parameter prefixes, loss [N] under the
    run's own (EMA) weights, and writes
    influence/self_influence_<split>.csv and a gallery of the `gallery_size` most self-influential
    images beside it (_gallery.png / .csv). The run's weights are restored afterwards.
    """
    snapshots = list_snapshots(run.run_dir)
    if not snapshots:
        raise UserError(f"{run.run_dir} has no snapshots/: train with --set logging.snapshot_interval=N "
                        f"(e.g. a tenth of train.steps) to keep the weights TracIn needs")
    images = run.data.labeled if split == "labeled" else run.data.unlabeled
    selected = _parameter_names(run.model, layers) if layers else []
    total = torch.zeros(len(images.labels), dtype=torch.float64)
    full = torch.zeros(len(images.labels), dtype=torch.float64)
    own_weights = {key: value.clone() for key, value in run.model.state_dict().items()}
    try:
        for path in snapshots:
            snapshot = load_snapshot(path)
            run.load_weights(snapshot["model"])
            logits, features = predict_logits(run.model, images.images, run.mean, run.std, batch_size, run.device,
                                              with_features=True)
            if split == "labeled":
                labels, loss_logits = images.labels, _as_is
            else:  # the pseudo-label and loss of the unlabeled term, as the snapshot's step made them
                labels = run.algorithm.pseudo_labels(logits, snapshot["algorithm"]).labels
                loss_logits = functools.partial(run.algorithm.loss_logits, state=snapshot["algorithm"])
            probs = torch.softmax(loss_logits(logits), dim=1)
            total += last_layer_self_influence(probs, labels, features, snapshot["lr"])
            if selected:
                full += snapshot["lr"] * _gradient_norms(run, images.images, labels, selected, batch_size, loss_logits)
    finally:
        run.load_weights(own_weights)  # the run's own (EMA) weights again, for whatever the caller does next
    logits = predict_logits(run.model, images.images, run.mean, run.std, batch_size, run.device)
    if split == "unlabeled":
        labels = run.algorithm.pseudo_labels(logits, run.algorithm_state).labels
    result = {"last_layer": total, "loss": F.cross_entropy(logits, labels, reduction="none").double()}
    if selected:
        result["full_gradient"] = full
    if write:
        order = torch.argsort(total, descending=True, stable=True)
        names = run.data.class_names
        columns = {"rank": list(range(1, len(order) + 1)), "sample_id": [images.sample_ids[i] for i in order],
                   "label" if split == "labeled" else "pseudo_label": [names[int(labels[i])] for i in order],
                   **{key: value[order].tolist() for key, value in result.items()}}
        write_csv(output_path(run.run_dir, split), columns)
        if gallery_size:
            write_influence_gallery(run, split, images, labels, total, order[:gallery_size])
    return result


def write_influence_gallery(run: LoadedRun, split: str, images, labels: torch.Tensor, scores: torch.Tensor,
                            order: torch.Tensor) -> None:
    """The top of the ranking as images: labeled with its label; unlabeled with the hidden truth and pseudo-label."""
    names, half = run.data.class_names, (len(order) + 1) // 2
    truth = images.labels
    rows = [GalleryRow(f"ranks {start + 1}-{start + len(part)}",
                       entries_from(images.images, part, images.sample_ids, names, labels=truth,
                                    pseudo_labels=None if split == "labeled" else labels, scores=scores,
                                    score_name="self-influence"))
            for start, part in ((0, order[:half]), (half, order[half:])) if len(part)]
    what = "label: the training label" if split == "labeled" else "label: hidden truth; pseudo: the run's pseudo-label"
    write_gallery(output_path(run.run_dir, split).with_name(f"self_influence_{split}_gallery"), rows,
                  f"most self-influential {split} images over the snapshots ({what})")


def _parameter_names(model: torch.nn.Module, prefixes: tuple[str, ...]) -> list[str]:
    names = [name for name, _ in model.named_parameters() if name.startswith(prefixes)]
    if not names:
        top = sorted({name.split(".")[0] for name, _ in model.named_parameters()})
        raise UserError(f"--layers {','.join(prefixes)} matches no parameter; parameter names start with: "
                        f"{', '.join(top)}")
    return names


def _as_is(logits: torch.Tensor) -> torch.Tensor:
    return logits


def _gradient_norms(run: LoadedRun, images: torch.Tensor, labels: torch.Tensor, names: list[str],
                    batch_size: int, loss_logits: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """||d CE / d selected parameters||^2 per sample [N], with per-sample gradients from torch.func."""
    model = run.model
    params = {name: p.detach() for name, p in model.named_parameters()}
    selected = {name: params.pop(name) for name in names}
    buffers = dict(model.named_buffers())

    def loss(chosen, x, y):
        out = functional_call(model, ({**params, **chosen}, buffers), (x.unsqueeze(0),))
        return F.cross_entropy(loss_logits(out), y.unsqueeze(0))

    per_sample_grad = vmap(grad(loss), in_dims=(None, 0, 0))
    norms = []
    for start in range(0, len(images), batch_size):
        x = to_model_input(images[start:start + batch_size].to(run.device), run.mean, run.std)
        y = labels[start:start + batch_size].to(run.device)
        grads = per_sample_grad(selected, x, y)
        norms.append(sum(g.pow(2).flatten(1).sum(1) for g in grads.values()).double().cpu())
    return torch.cat(norms)


def output_path(run_dir: Path, split: str) -> Path:
    return run_dir / "influence" / f"self_influence_{split}.csv"
