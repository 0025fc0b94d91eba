"""`debiaspl eval`: test metrics, calibration, MC Dropout uncertainty and OOD detection of a run.

Writes into `<run>/eval/`: metrics.json (with an "ood" section when asked), predictions.csv (per
test image), reliability.png, and ood_<name>.png per out-of-distribution set.
"""

from __future__ import annotations

import math

from pathlib import Path

import torch

from debiaspl.inference import predict_logits
from debiaspl.analysis.load_run import LoadedRun, class_index
from debiaspl.metrics.classification import classification_metrics
from debiaspl.metrics.ood import detection_metrics, ood_scores, score_histogram_figure
from debiaspl.metrics.plots import reliability_diagram_figure, save_figure, uncertainty_view_figure
from debiaspl.files import write_csv, write_json
from debiaspl.metrics.gallery import GalleryRow, entries_from, write_gallery
from debiaspl.metrics.predictive import MCDropoutAccumulator, brier_score, negative_log_likelihood
from debiaspl.metrics.uncertainty import (accuracy_by_uncertainty, calibration_update, expected_calibration_error,
                                           normalized_entropy, rejection_curve)
from debiaspl.data.datasets import IMAGE_SUFFIXES, ImageSet, decode_image, load_source, quiet_bomb_warnings
from debiaspl.errors import UserError

CALIBRATION_BINS = 15


GALLERY_SIZE = 10  # images per gallery row


def evaluate_run(run: LoadedRun, *, mc_passes: int = 0, ood_specs: tuple[str, ...] = (),
                 ood_classes: tuple[str, ...] = (), batch_size: int = 256, seed: int = 0, noise_std: float = 0.2,
                 uncertainty_threshold: float = 0.5) -> dict:
    """Everything `debiaspl eval` reports; also written under run_dir/eval/.

    The uncertainty view: accuracy of the test images at or below / above `uncertainty_threshold` of
    normalised entropy, accuracy against the fraction rejected as most uncertain (entropy, and BALD
    with MC Dropout), and entropy histograms of the test set, the test set with Gaussian noise of std
    `noise_std` (in [0, 1] pixel units) and each OOD set (uncertainty.png, metrics.json "uncertainty").
    """
    if not 0 <= noise_std < math.inf:  # also false for NaN
        raise UserError(f"--noise-std {noise_std}: must be a finite number >= 0")
    if not 0 <= uncertainty_threshold <= 1:
        raise UserError(f"--uncertainty-threshold {uncertainty_threshold}: must be in [0, 1] (normalized entropy)")
    out = run.run_dir / "eval"
    if mc_passes and run.config.model.dropout == 0:
        raise UserError(f"--mc-dropout needs a model trained with dropout, but {run.run_dir} has model.dropout = 0; "
                        f"train with --set model.dropout=0.3 (for example)")
    test = run.data.test
    in_set, out_sets, in_mask = test, {}, torch.ones(len(test.labels), dtype=torch.bool)
    if ood_classes:
        held_out = [class_index(name, run.data.class_names, "--ood-classes") for name in ood_classes]
        if len(set(held_out)) == run.data.num_classes:
            raise UserError("--ood-classes names every class: leave some as in-distribution")
        is_out = torch.isin(test.labels, torch.tensor(held_out))
        in_set, in_mask = _subset(test, ~is_out), ~is_out
        out_sets["classes_" + "_".join(run.data.class_names[c] for c in held_out)] = _subset(test, is_out)
    for spec in ood_specs:
        name, images = _load_ood(spec, run)
        if name in out_sets:  # two folders with the same name: keep both
            name = f"{name}_{len(out_sets) + 1}"
        out_sets[name] = ImageSet(images, torch.full((len(images),), -1), [f"{name}/{i}" for i in range(len(images))])
    out.mkdir(exist_ok=True)  # only now: a mistake in the arguments or the OOD sets leaves no eval/ behind

    logits = _logits(run, test.images, batch_size)
    probs = torch.softmax(logits, dim=1)
    metrics = classification_metrics(logits, test.labels, run.data.labeled_counts)
    count, confidence_sum, correct_sum = (torch.zeros(CALIBRATION_BINS, dtype=torch.long),
                                          torch.zeros(CALIBRATION_BINS, dtype=torch.float64),
                                          torch.zeros(CALIBRATION_BINS, dtype=torch.float64))
    confidence, predicted = probs.max(dim=1)
    calibration_update(count, confidence_sum, correct_sum, confidence, (predicted == test.labels).double())
    metrics.update(nll=negative_log_likelihood(logits, test.labels), brier=brier_score(probs, test.labels),
                   ece=expected_calibration_error(count, confidence_sum, correct_sum), step=run.step,
                   class_names=run.data.class_names)
    save_figure(reliability_diagram_figure(count, confidence_sum, correct_sum,
                                           f"{run.run_dir.name}: test calibration, step {run.step}"),
                out / "reliability.png")
    columns = {"sample_id": test.sample_ids, "label": test.labels.tolist(), "prediction": predicted.tolist(),
               "confidence": confidence.tolist(), "normalized_entropy": normalized_entropy(probs).tolist()}
    mc = {}
    if mc_passes:
        mc["test"] = mc_dropout_scores(run, test.images, mc_passes, batch_size, seed)
        for key in ("predictive_entropy", "expected_entropy", "mutual_information", "variance"):
            columns[key] = mc["test"][key].tolist()
        metrics["mc_dropout"] = {"passes": mc_passes, **{f"mean_{key}": float(value.mean()) for key, value in
                                 mc["test"].items() if value.dim() == 1 and value.is_floating_point()}}
    write_csv(out / "predictions.csv", columns)
    uncertainty = {"normalized entropy": normalized_entropy(probs)}
    if mc:
        uncertainty["BALD (mutual information)"] = mc["test"]["mutual_information"]
    short = {"normalized entropy": "entropy", "BALD (mutual information)": "BALD"}
    rows = [GalleryRow(f"highest {name}", entries_from(
                test.images, torch.argsort(values, descending=True, stable=True)[:GALLERY_SIZE], test.sample_ids,
                run.data.class_names, labels=test.labels, pseudo_labels=predicted, scores=values,
                score_name=short[name], pseudo_name="predicted"))
            for name, values in uncertainty.items()]
    write_gallery(out / "uncertain_gallery", rows, f"{run.run_dir.name}: the most uncertain test images "
                  f"(label: the truth), step {run.step}")
    out_entropies = {}
    if out_sets:
        # the whole test set is the in-distribution set unless --ood-classes split it: reuse its passes then
        reused = (logits, mc["test"]["mutual_information"] if mc else None) if in_set is test else None
        metrics["ood"], out_entropies = _ood(run, in_set, out_sets, reused, mc_passes, batch_size, seed, out)
    metrics["uncertainty"] = _uncertainty_view(run, test, in_mask, probs, predicted, uncertainty, out_entropies,
                                               noise_std, uncertainty_threshold, batch_size, seed, out)
    write_json(out / "metrics.json", metrics)
    return metrics


def _uncertainty_view(run: LoadedRun, test: ImageSet, in_mask: torch.Tensor, probs: torch.Tensor, predicted: torch.Tensor,
                      uncertainty: dict[str, torch.Tensor], out_entropies: dict[str, torch.Tensor], noise_std: float,
                      threshold: float, batch_size: int, seed: int, out: Path) -> dict:
    correct = predicted == test.labels
    curves = {name: rejection_curve(values, correct) for name, values in uncertainty.items()}
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(test.images.shape, generator=generator) * (noise_std * 255)
    noisy = (test.images.float() + noise).round().clamp(0, 255).to(torch.uint8)
    noisy_probs = torch.softmax(_logits(run, noisy, batch_size), dim=1)
    # in-distribution only: with --ood-classes, the held-out classes are an OOD set of their own here
    entropies = {"test" if in_mask.all() else "test, in-distribution classes": normalized_entropy(probs[in_mask]),
                 f"test + Gaussian noise, std {noise_std:g}": normalized_entropy(noisy_probs),
                 **{f"OOD: {name}": values for name, values in out_entropies.items()}}
    figure = uncertainty_view_figure(curves, entropies,
                                     f"{run.run_dir.name}: uncertainty of the test predictions, step {run.step}")
    save_figure(figure, out / "uncertainty.png")
    return {"threshold": threshold,
            **accuracy_by_uncertainty(uncertainty["normalized entropy"], correct, threshold),
            "rejected_fraction": curves["normalized entropy"][0],
            "accuracy_kept": {name: accuracies for name, (_, accuracies) in curves.items()},
            "noisy_accuracy": float((noisy_probs.argmax(dim=1) == test.labels).double().mean()),
            "mean_normalized_entropy": {name: float(values.double().mean()) for name, values in entropies.items()}}


def _ood(run: LoadedRun, in_set: ImageSet, out_sets: dict[str, ImageSet], reused, mc_passes: int,
         batch_size: int, seed: int, out: Path) -> dict:
    if reused is not None:
        in_logits, in_mi = reused
    else:
        in_logits = _logits(run, in_set.images, batch_size)
        in_mi = (mc_dropout_scores(run, in_set.images, mc_passes, batch_size, seed)["mutual_information"]
                 if mc_passes else None)
    scores_in = ood_scores(in_logits, in_mi)
    report, entropies = {}, {}
    for name, images in out_sets.items():
        out_logits = _logits(run, images.images, batch_size)
        out_mi = (mc_dropout_scores(run, images.images, mc_passes, batch_size, seed + 1)["mutual_information"]
                  if mc_passes else None)
        scores_out = ood_scores(out_logits, out_mi)
        report[name] = {"num_in": len(in_set.labels), "num_out": len(images.labels),
                        **{score: detection_metrics(scores_in[score], scores_out[score]) for score in scores_in}}
        save_figure(score_histogram_figure(scores_in, scores_out, f"{run.run_dir.name}: in-distribution test vs {name}"),
                    out / f"ood_{name}.png")
        write_ood_gallery(run, in_set, images, in_logits, out_logits, scores_in, scores_out, out / f"ood_{name}_gallery")
        entropies[name] = scores_out["entropy"]
    return report, entropies


def write_ood_gallery(run: LoadedRun, in_set: ImageSet, out_set: ImageSet, in_logits: torch.Tensor,
                      out_logits: torch.Tensor, scores_in: dict, scores_out: dict, path: Path) -> None:
    """Where each score errs: the OOD images it finds most in-distribution, the test images it finds most OOD."""
    names = run.data.class_names
    rows = []
    for score in scores_in:
        out_order = torch.argsort(scores_out[score], stable=True)[:GALLERY_SIZE]  # lowest: looks in-distribution
        in_order = torch.argsort(scores_in[score], descending=True, stable=True)[:GALLERY_SIZE]
        rows += [GalleryRow(f"{score}: OOD images scored most in-distribution",
                            entries_from(out_set.images, out_order, out_set.sample_ids, names,
                                         pseudo_labels=out_logits.argmax(dim=1), scores=scores_out[score], score_name=score,
                                         pseudo_name="predicted")),
                 GalleryRow(f"{score}: test images scored most OOD",
                            entries_from(in_set.images, in_order, in_set.sample_ids, names, labels=in_set.labels,
                                         pseudo_labels=in_logits.argmax(dim=1), scores=scores_in[score], score_name=score,
                                         pseudo_name="predicted"))]
    write_gallery(path, rows, f"{run.run_dir.name}: the hardest cases of each OOD score (higher = more OOD)")


def _logits(run: LoadedRun, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    return predict_logits(run.model, images, run.mean, run.std, batch_size, run.device)


def mc_dropout_scores(run: LoadedRun, images: torch.Tensor, passes: int, batch_size: int, seed: int) -> dict:
    """T stochastic passes, streamed batch by batch so memory stays O(N x C)."""
    accumulator = MCDropoutAccumulator(len(images), run.data.num_classes)
    # Dropout masks come from the global RNG: fork it so evaluation leaves the caller's state alone.
    with torch.random.fork_rng(devices=[run.device] if run.device.type == "cuda" else []):
        torch.manual_seed(seed)
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            for _ in range(passes):
                logits = predict_logits(run.model, chunk, run.mean, run.std, batch_size, run.device, keep_dropout=True)
                accumulator.add(start, torch.softmax(logits, dim=1))
    return accumulator.result()


def _load_ood(spec: str, run: LoadedRun) -> tuple[str, torch.Tensor]:
    """'imagefolder:PATH' (every image below PATH), 'cifar10:ROOT', 'cifar100:ROOT' or 'digits' -> (name, images)."""
    kind, _, root = spec.partition(":")
    if kind not in ("imagefolder", "cifar10", "cifar100", "digits") or (kind != "digits" and not root):
        raise UserError(f"--ood {spec!r}: expected imagefolder:PATH, cifar10:ROOT, cifar100:ROOT or digits")
    shape = tuple(run.data.test.images.shape[1:])
    if kind == "imagefolder":
        images = _read_images(Path(root), channels=shape[0])
    else:
        images = load_source(kind, root, download=False).test.images
    if tuple(images.shape[1:]) != shape:
        raise UserError(f"--ood {spec!r}: its images are {tuple(images.shape[1:])} (channels, height, width) but the "
                        f"run was trained on {shape}; resize them first")
    name = Path(root).name if kind == "imagefolder" else kind
    return name or kind, images


def _read_images(folder: Path, channels: int) -> torch.Tensor:
    """Every image below `folder` (flat or in sub-folders), as the run's channel count, [N, C, H, W] uint8."""
    files = sorted(path for path in folder.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"--ood imagefolder:{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) below it")
    images = []
    with quiet_bomb_warnings():  # decode_image refuses an over-large image itself, naming it
        for path in files:
            array = torch.from_numpy(decode_image(path, "L" if channels == 1 else "RGB"))
            images.append(array[None] if channels == 1 else array.permute(2, 0, 1))
    sizes = {tuple(image.shape) for image in images}
    if len(sizes) > 1:
        raise UserError(f"--ood imagefolder:{folder}: its images have different sizes {sorted(sizes)[:3]}; resize them first")
    return torch.stack(images)


def _subset(images: ImageSet, keep: torch.Tensor) -> ImageSet:
    return images.subset(torch.nonzero(keep).flatten().numpy())
