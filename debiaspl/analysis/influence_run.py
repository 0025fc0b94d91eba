"""`debiaspl influence`: TracIn self-influence (Pruthi et al. 2020) of each sample, over a run's snapshots.

Self-influence sum_t lr_t * ||grad_w loss(x, y; w_t)||^2 is large for samples the model keeps
having to fit against its own inclination: mislabeled or atypical ones. Two forms: the exact
last-layer one from penultimate features, and the full per-sample gradient of chosen layers
(torch.func). Both on un-augmented images with BatchNorm in eval mode.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from debiaspl.inference import predict_logits
from debiaspl.data.datasets import ImageSet
from debiaspl.metrics.gallery import GalleryEntry, GalleryRow, entries_from, split_rows, write_gallery
from debiaspl.metrics.influence import cluster_by_similarity, last_layer_influence, last_layer_self_influence
from debiaspl.analysis.load_run import LoadedRun, class_index, load_snapshot
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
    snapshots = _snapshots(run)
    images = run.data.labeled if split == "labeled" else run.data.unlabeled
    selected = _parameter_names(run.model, layers) if layers else []
    total = torch.zeros(len(images.labels), dtype=torch.float64)
    full = torch.zeros(len(images.labels), dtype=torch.float64)
    with _restoring_weights(run):
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
    rows = split_rows(entries_from(images.images, order, images.sample_ids, run.data.class_names, labels=images.labels,
                                   pseudo_labels=None if split == "labeled" else labels, scores=scores,
                                   score_name="self-influence"), per_row=8)
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
    return torch.cat([g.square().sum(dim=1) for g in _per_sample_gradients(run, images, labels, names, batch_size,
                                                                           loss_logits)])


def output_path(run_dir: Path, split: str) -> Path:
    return run_dir / "influence" / f"self_influence_{split}.csv"


# ---- proponents and opponents of test predictions, and clusters by TracIn similarity


@dataclass(frozen=True)
class _TrainingSet:
    """One of the sets a run trained on, with the target and loss each snapshot would use on it."""

    name: str                     # "labeled" or "unlabeled"
    images: ImageSet

    def signal(self, run: LoadedRun, logits: torch.Tensor, state: dict,
               index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(labels [N], probs [N, C] float64 of the loss logits, weight [N]) of images `index` of the set
        (None: all of them), whose logits [N, C] these are, under the algorithm state `state`.

        The weight is what the training loss gives the sample relative to a labeled one: 1 for a labeled
        image; lambda_u / mu times the mask for an unlabeled one (its loss is lambda_u * the mean over mu * B
        samples of mask * CE), so an image the threshold left out had no gradient at that snapshot. The
        softmax is taken in float64: for confident samples the residual p - onehot(y) is tiny, and float32
        would leave mostly rounding in its direction.
        """
        if self.name == "labeled":
            given = self.images.labels if index is None else self.images.labels[index]
            return given, torch.softmax(logits.double(), dim=1), torch.ones(len(given), dtype=torch.float64)
        pseudo = run.algorithm.pseudo_labels(logits, state)
        weight = pseudo.mask.double() * run.config.algorithm.unlabeled_weight / run.config.train.unlabeled_ratio
        return pseudo.labels, torch.softmax(run.algorithm.loss_logits(logits.double(), state), dim=1), weight


def _training_sets(run: LoadedRun, split: str) -> list[_TrainingSet]:
    names = ("labeled", "unlabeled") if split == "both" else (split,)
    return [_TrainingSet(name, run.data.labeled if name == "labeled" else run.data.unlabeled) for name in names]


@contextlib.contextmanager
def _restoring_weights(run: LoadedRun):
    own_weights = {key: value.clone() for key, value in run.model.state_dict().items()}
    try:
        yield
    finally:
        run.load_weights(own_weights)  # the run's own (EMA) weights again, for whatever the caller does next


def _snapshots(run: LoadedRun) -> list[Path]:
    snapshots = list_snapshots(run.run_dir)
    if not snapshots:
        raise UserError(f"{run.run_dir} has no snapshots/: train with --set logging.snapshot_interval=N "
                        f"(e.g. a tenth of train.steps) to keep the weights TracIn needs")
    return snapshots


def influence_on_test_images(run: LoadedRun, test_indices: list[int], *, split: str = "both", layers: tuple[str, ...] = (),
                   batch_size: int = 256) -> dict[str, torch.Tensor]:
    """TracIn influence of every training sample on each test image: {set name: [N_set, T] float64}.

    sum over snapshots of lr * w * grad CE(train sample) . grad CE(test image), the test image under its
    true label, a labeled sample under its label, an unlabeled one under the pseudo-label and loss
    (adaptive margin) the snapshot's algorithm state gives, w its weight in the training loss
    (_TrainingSet.signal: 0 where the mask left it out). Last-layer closed form, or with `layers` the
    full per-sample gradient of the parameters whose names start with them (torch.func).
    """
    test = run.data.test
    if not test_indices or min(test_indices) < 0 or max(test_indices) >= len(test.labels):
        raise UserError(f"--test {','.join(map(str, test_indices))}: test indices must lie in 0..{len(test.labels) - 1}")
    chosen = torch.as_tensor(test_indices)
    test_images, test_labels = test.images[chosen], test.labels[chosen]
    sets = _training_sets(run, split)
    selected = _parameter_names(run.model, layers) if layers else []
    scores = {s.name: torch.zeros(len(s.images.labels), len(chosen), dtype=torch.float64) for s in sets}
    with _restoring_weights(run):
        for path in _snapshots(run):
            snapshot = load_snapshot(path)
            run.load_weights(snapshot["model"])
            lr, state = snapshot["lr"], snapshot["algorithm"]
            test_logits, test_features = predict_logits(run.model, test_images, run.mean, run.std, batch_size,
                                                        run.device, with_features=True)
            test_probs = torch.softmax(test_logits.double(), dim=1)
            if selected:
                test_gradients = torch.cat(list(_per_sample_gradients(run, test_images, test_labels, selected,
                                                                      batch_size, _as_is)))
            for training in sets:
                logits, features = predict_logits(run.model, training.images.images, run.mean, run.std, batch_size,
                                                  run.device, with_features=True)
                labels, probs, weight = training.signal(run, logits, state)
                if not selected:
                    scores[training.name] += weight[:, None] * last_layer_influence(
                        probs, labels, features, test_probs, test_labels, test_features, lr)
                    continue
                loss_logits = _as_is if training.name == "labeled" else functools.partial(run.algorithm.loss_logits,
                                                                                          state=state)
                rows = [gradients @ test_gradients.T for gradients in _per_sample_gradients(
                    run, training.images.images, labels, selected, batch_size, loss_logits)]
                scores[training.name] += lr * weight[:, None] * torch.cat(rows)
    return scores


def _own_view(run: LoadedRun, images: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, features) of `images` under the run's own (EMA) weights."""
    return predict_logits(run.model, images, run.mean, run.std, batch_size, run.device, with_features=True)


def proponents_and_opponents(run: LoadedRun, test_indices: list[int], *, k: int = 8, split: str = "both",
                             layers: tuple[str, ...] = (), batch_size: int = 256) -> list[Path]:
    """For each test image, the k strongest proponents and opponents over the training sets and its k nearest
    neighbours in the embedding (cosine of penultimate features under the run's own weights): a CSV and a
    gallery each under influence/proponents/. Returns the CSV paths."""
    if k < 1:
        raise UserError(f"--k {k}: must be at least 1")
    scores = influence_on_test_images(run, test_indices, split=split, layers=layers, batch_size=batch_size)
    test, names = run.data.test, run.data.class_names
    test_logits, test_features = _own_view(run, test.images[torch.as_tensor(test_indices)], batch_size)
    sets = _training_sets(run, split)
    # everything pooled over the sets, in the order of `sets`: (set, index in it) per row
    members = [(training, i) for training in sets for i in range(len(training.images.labels))]
    pooled_scores = torch.cat([scores[training.name] for training in sets])
    features, pseudo = [], []
    for training in sets:
        logits, own_features = _own_view(run, training.images.images, batch_size)
        features.append(own_features)
        pseudo.append(run.algorithm.pseudo_labels(logits, run.algorithm_state).labels if training.name == "unlabeled"
                      else torch.full((len(logits),), -1))
    similarity = F.normalize(torch.cat(features).double(), dim=1) @ F.normalize(test_features.double(), dim=1).T
    pseudo = torch.cat(pseudo)
    form = f"full gradient of {','.join(layers)}" if layers else "last layer"
    snapshot_count = len(_snapshots(run))
    paths = []
    for column, index in enumerate(test_indices):
        column_scores = pooled_scores[:, column]
        by_score = torch.argsort(column_scores, descending=True, stable=True)
        ranked = {"proponent": [j for j in by_score[:k].tolist() if column_scores[j] > 0],
                  "opponent": [j for j in by_score.flip(0)[:k].tolist() if column_scores[j] < 0],
                  "neighbour": torch.argsort(similarity[:, column], descending=True, stable=True)[:k].tolist()}
        table = {"kind": [], "rank": [], "set": [], "sample_id": [], "label": [], "pseudo_label": [], "score": []}
        rows = [GalleryRow(f"test image {index}", (GalleryEntry(test.sample_ids[index], test.images[index],
                                                               names[int(test.labels[index])],
                                                               names[int(test_logits[column].argmax())],
                                                               pseudo_name="predicted"),))]
        titles = {"proponent": "proponents (lower its loss)", "opponent": "opponents (raise its loss)",
                  "neighbour": "embedding neighbours"}
        for kind, chosen in ranked.items():
            values = similarity[:, column] if kind == "neighbour" else column_scores
            entries = []
            for rank, j in enumerate(chosen, start=1):
                training, i = members[j]
                images, value = training.images, float(values[j])
                label, pseudo_label = names[int(images.labels[i])], names[int(pseudo[j])] if pseudo[j] >= 0 else None
                for key, cell in (("kind", kind), ("rank", rank), ("set", training.name),
                                  ("sample_id", images.sample_ids[i]), ("label", label),
                                  ("pseudo_label", pseudo_label or ""), ("score", value)):
                    table[key].append(cell)
                entries.append(GalleryEntry(images.sample_ids[i], images.images[i], label, pseudo_label, value,
                                            "cosine" if kind == "neighbour" else "TracIn"))
            rows.append(GalleryRow(titles[kind], tuple(entries)))
        path = run.run_dir / "influence" / "proponents" / f"test_{index}.csv"
        write_csv(path, table)
        write_gallery(path.with_name(f"test_{index}_gallery"), rows,
                      f"test image {index} ({test.sample_ids[index]}): TracIn proponents and opponents ({form}, "
                      f"{snapshot_count} snapshots) and embedding neighbours (label: the truth or given label; "
                      f"pseudo: the run's pseudo-label, or the test prediction)")
        paths.append(path)
    return paths


def tracin_clusters(run: LoadedRun, class_name: str, *, num_clusters: int = 4, split: str = "both",
                    per_row: int = 10, max_images: int = 5000, batch_size: int = 256) -> Path:
    """Clusters within one class by TracIn similarity: its labeled images and the unlabeled ones the run
    pseudo-labels with it, clustered on their unit-normalised last-layer TracIn gradients (summed over
    snapshots; each image's own loss gradient, not weighted by the training mask, as for self-influence).
    Above `max_images` an evenly spaced subset of each set is clustered. Writes
    influence/clusters_<class>.csv and a gallery with one row per cluster."""
    names = run.data.class_names
    target = class_index(class_name, names, "--cluster")
    if num_clusters < 1:
        raise UserError(f"--clusters {num_clusters}: must be at least 1")
    snapshots = _snapshots(run)
    members = {}
    for training in _training_sets(run, split):
        if training.name == "labeled":
            labels = training.images.labels
        else:
            logits = predict_logits(run.model, training.images.images, run.mean, run.std, batch_size, run.device)
            labels = run.algorithm.pseudo_labels(logits, run.algorithm_state).labels
        members[training.name] = (training, torch.nonzero(labels == target).squeeze(1))
    size = sum(len(index) for _, index in members.values())
    if size > max_images:  # the similarity matrix is size x size float64, with a few temporaries of that size
        members = {name: (training, index[torch.linspace(0, len(index) - 1, max(1, len(index) * max_images // size)).long()]
                          if len(index) else index) for name, (training, index) in members.items()}
        size = sum(len(index) for _, index in members.values())
    if size < num_clusters:
        raise UserError(f"--cluster {names[target]}: {size} images, fewer than --clusters {num_clusters}")
    gram = torch.zeros(size, size, dtype=torch.float64)
    with _restoring_weights(run):
        for path in snapshots:
            snapshot = load_snapshot(path)
            run.load_weights(snapshot["model"])
            parts = []
            for training, index in members.values():
                images = training.images.images[index]
                logits, features = predict_logits(run.model, images, run.mean, run.std, batch_size, run.device,
                                                  with_features=True)
                labels, probs, _ = training.signal(run, logits, snapshot["algorithm"], index)
                parts.append((probs, labels, features))
            probs, labels, features = (torch.cat(tensors) for tensors in zip(*parts))
            gram += last_layer_influence(probs, labels, features, probs, labels, features, snapshot["lr"])
    clusters = cluster_by_similarity(gram, num_clusters)
    norms = gram.diagonal().clamp_min(1e-300).sqrt()
    cosine = gram / (norms[:, None] * norms[None, :])
    flat = [(training, int(i)) for training, index in members.values() for i in index]
    # mean cosine to the other members of its cluster (a cluster of one: 1)
    same = clusters[:, None] == clusters[None, :]
    others = same.sum(dim=1) - 1
    centrality = torch.where(others > 0, ((cosine * same).sum(dim=1) - cosine.diagonal()) / others.clamp_min(1), 1.0)
    table = {"cluster": clusters.tolist(), "centrality": centrality.tolist(), "set": [t.name for t, _ in flat],
             "sample_id": [t.images.sample_ids[i] for t, i in flat],
             "label": [names[int(t.images.labels[i])] for t, i in flat]}
    path = run.run_dir / "influence" / f"clusters_{names[target]}.csv"
    write_csv(path, table)
    rows = []
    for cluster in range(num_clusters):
        inside = torch.nonzero(clusters == cluster).squeeze(1)
        inside = inside[torch.argsort(centrality[inside], descending=True, stable=True)][:per_row]
        entries = tuple(GalleryEntry(flat[j][0].images.sample_ids[flat[j][1]], flat[j][0].images.images[flat[j][1]],
                                     names[int(flat[j][0].images.labels[flat[j][1]])],
                                     names[target] if flat[j][0].name == "unlabeled" else None,
                                     float(centrality[j]), "centrality") for j in inside.tolist())
        rows.append(GalleryRow(f"cluster {cluster} ({int((clusters == cluster).sum())} images)", entries))
    write_gallery(path.with_name(f"clusters_{names[target]}_gallery"), rows,
                  f"{names[target]}: clusters by TracIn similarity (cosine of last-layer gradients over the snapshots); "
                  f"the most central images of each (label: given or hidden truth; pseudo: shown for unlabeled images)")
    return path


def _per_sample_gradients(run: LoadedRun, images: torch.Tensor, labels: torch.Tensor, names: list[str],
                          batch_size: int, loss_logits: Callable[[torch.Tensor], torch.Tensor]):
    """Batches [b, P] float64 of flattened per-sample gradients of CE w.r.t. the named parameters (torch.func)."""
    model = run.model
    params = {name: p.detach() for name, p in model.named_parameters()}
    selected = {name: params.pop(name) for name in names}
    buffers = dict(model.named_buffers())

    def loss(chosen, x, y):
        out = functional_call(model, ({**params, **chosen}, buffers), (x.unsqueeze(0),))
        return F.cross_entropy(loss_logits(out), y.unsqueeze(0))

    per_sample_grad = vmap(grad(loss), in_dims=(None, 0, 0))
    for start in range(0, len(images), batch_size):
        x = to_model_input(images[start:start + batch_size].to(run.device), run.mean, run.std)
        y = labels[start:start + batch_size].to(run.device)
        grads = per_sample_grad(selected, x, y)
        yield torch.cat([grads[name].flatten(1) for name in names], dim=1).double().cpu()
