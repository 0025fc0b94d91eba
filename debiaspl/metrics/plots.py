"""Figures for reports: the data map of Dataset Cartography (Swayamdipta et al. 2020), reliability diagrams
(Guo et al. 2017), pseudo-label class distributions (DebiasPL, Wang et al. 2022) and confusion matrices.

Figures are built with matplotlib.figure.Figure directly, never through pyplot, so nothing is left in
pyplot's global list of open figures; each function returns the Figure for the caller to save.
"""

import os
import sys
import threading

import numpy as np
import torch

from debiaspl.metrics.uncertainty import expected_calibration_error


def _figure(**kwargs):
    """A new Figure on the Agg backend; matplotlib is imported here so the package does not need it."""
    import matplotlib
    # Switching backends while pyplot is loaded closes every open pyplot figure (the user's too); our figures
    # never go through pyplot, so leave the user's backend alone then.
    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    from matplotlib.figure import Figure
    return Figure(**kwargs)


def _numpy(values) -> np.ndarray:
    """A float64 numpy copy of a tensor, array or list."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.float64)


def _label_classes(axes, class_names: list[str], axis: str) -> None:
    """Class names as tick labels; x labels are vertical past 10 classes or 40 characters so none overlap."""
    positions = np.arange(len(class_names))
    rotation = 90 if len(class_names) > 10 or sum(len(str(name)) for name in class_names) > 40 else 0
    if axis == "x":
        axes.set_xticks(positions, list(class_names), rotation=rotation)
    else:
        axes.set_yticks(positions, list(class_names))


def data_map_figure(confidence, variability, correctness, title: str, max_points: int = 25000):
    """Data map: x = variability, y = confidence, colour = correctness in [0, 1] with a colour bar.

    confidence, variability, correctness: [N]. Points with any nan are dropped; above `max_points` an evenly
    spaced subset is drawn (deterministic, no RNG). The regions are labelled where the paper puts them.
    """
    confidence, variability, correctness = _numpy(confidence), _numpy(variability), _numpy(correctness)
    keep = ~(np.isnan(confidence) | np.isnan(variability) | np.isnan(correctness))
    confidence, variability, correctness = confidence[keep], variability[keep], correctness[keep]
    total = len(confidence)
    if total > max_points:
        # floor(i * total / max_points) is strictly increasing because the step total / max_points > 1.
        chosen = np.arange(max_points) * total // max_points
        confidence, variability, correctness = confidence[chosen], variability[chosen], correctness[chosen]
        title = f"{title} ({max_points} of {total} samples)"

    figure = _figure(figsize=(8, 6))
    axes = figure.add_subplot()
    points = axes.scatter(variability, confidence, c=correctness, cmap="coolwarm", vmin=0.0, vmax=1.0, s=8,
                          alpha=0.7, linewidths=0)
    figure.colorbar(points, ax=axes, label="correctness")
    box = lambda colour: dict(boxstyle="round,pad=0.3", ec=colour, lw=2, fc="white")
    axes.annotate("easy-to-learn", xy=(0.27, 0.85), xycoords="axes fraction", ha="center", va="center",
                  fontsize=13, bbox=box("tab:red"))
    axes.annotate("ambiguous", xy=(0.9, 0.5), xycoords="axes fraction", ha="center", va="center",
                  fontsize=13, rotation=350, bbox=box("black"))
    axes.annotate("hard-to-learn", xy=(0.35, 0.25), xycoords="axes fraction", ha="center", va="center",
                  fontsize=13, bbox=box("tab:blue"))
    axes.set_xlim(left=0.0)
    axes.set_ylim(0.0, 1.0)
    axes.set_xlabel("variability")
    axes.set_ylabel("confidence")
    axes.set_title(title)
    return figure


def reliability_diagram_figure(count, confidence_sum, correct_sum, title: str):
    """Accuracy of each confidence bin against the diagonal, the gap shaded, the ECE in the title.

    count, confidence_sum, correct_sum: [bins] over [0, 1], as filled by `calibration_update`. Empty bins
    are left blank.
    """
    count, confidence_sum, correct_sum = _numpy(count), _numpy(confidence_sum), _numpy(correct_sum)
    bins = len(count)
    ece = expected_calibration_error(*(torch.from_numpy(values) for values in (count, confidence_sum, correct_sum)))
    left = np.arange(bins) / bins
    filled = count > 0
    accuracy = correct_sum[filled] / count[filled]
    confidence = confidence_sum[filled] / count[filled]

    figure = _figure(figsize=(6, 6))
    axes = figure.add_subplot()
    axes.bar(left[filled], accuracy, width=1.0 / bins, align="edge", color="tab:blue", edgecolor="black",
             label="accuracy")
    axes.bar(left[filled], confidence - accuracy, bottom=accuracy, width=1.0 / bins, align="edge",
             color="tab:red", alpha=0.3, hatch="//", edgecolor="tab:red", label="gap to confidence")
    axes.plot([0.0, 1.0], [0.0, 1.0], linestyle="--", color="grey", label="perfect calibration")
    axes.set_xlim(0.0, 1.0)
    axes.set_ylim(0.0, 1.0)
    axes.set_xlabel("confidence")
    axes.set_ylabel("accuracy")
    axes.legend(loc="upper left")
    axes.set_title(f"{title} (ECE = {100 * ece:.2f}%)")
    return figure


def class_distribution_figure(class_names: list[str], estimated, true, title: str, estimated_label: str = "q_hat",
                              true_label: str = "true"):
    """Grouped bars of two [C] class distributions, each normalised to sum 1; `true` may be None.

    An all-zero distribution is drawn as zeros.
    """
    estimated = _numpy(estimated)
    series = [(estimated, estimated_label)] + ([] if true is None else [(_numpy(true), true_label)])
    for values, label in series:
        if len(values) != len(class_names):
            raise ValueError(f"{label} has {len(values)} entries for {len(class_names)} classes")
    width = 0.8 / len(series)
    positions = np.arange(len(class_names))

    figure = _figure(figsize=(max(6.0, 0.4 * len(class_names)), 4))
    axes = figure.add_subplot()
    for offset, (values, label) in enumerate(series):
        total = values.sum()
        axes.bar(positions + (offset - (len(series) - 1) / 2) * width, values / total if total > 0 else values,
                 width=width, label=label)
    _label_classes(axes, class_names, "x")
    axes.set_ylabel("fraction of samples")
    axes.legend()
    axes.set_title(title)
    figure.tight_layout()
    return figure


def confusion_matrix_figure(confusion, class_names: list[str], title: str):
    """Row-normalised confusion matrix [C, C] (rows = true, so the diagonal is recall) with a colour bar.

    Rows of classes that never occur are blank. Cell values are written only when C <= 20.
    """
    confusion = _numpy(confusion)
    num_classes = len(class_names)
    if confusion.shape != (num_classes, num_classes):
        raise ValueError(f"confusion is {confusion.shape} for {num_classes} classes")
    row_sums = confusion.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        normalised = np.where(row_sums > 0, confusion / row_sums, np.nan)

    size = max(5.0, 0.45 * num_classes + 2)
    figure = _figure(figsize=(size, size))
    axes = figure.add_subplot()
    image = axes.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    # fraction / pad sized so the colour bar is as tall as the square heat map.
    figure.colorbar(image, ax=axes, label="fraction of the true class", fraction=0.046, pad=0.04)
    if num_classes <= 20:
        for row, column in zip(*np.nonzero(~np.isnan(normalised))):
            value = normalised[row, column]
            axes.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=8,
                      color="white" if value > 0.5 else "black")
    _label_classes(axes, class_names, "x")
    _label_classes(axes, class_names, "y")
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    figure.tight_layout()
    return figure


def learning_curves_figure(panels: dict[str, list[tuple[str, list, list, list]]]):
    """One panel per title, one line per (label, steps, mean, std) with a band of +/- std (none where nan)."""
    figure = _figure(figsize=(5.5 * len(panels), 4.2), layout="constrained")
    for axes, (title, curves) in zip(np.atleast_1d(figure.subplots(1, len(panels))), panels.items()):
        for label, steps, mean, std in curves:
            if not len(steps):
                continue
            mean, std = _numpy(mean), np.nan_to_num(_numpy(std))
            line, = axes.plot(steps, mean, label=label)
            axes.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
        axes.set_title(title)
        axes.set_xlabel("step")
        axes.grid(alpha=0.3)
    figure.axes[0].legend(fontsize="small")
    return figure


def save_figure(figure, path) -> None:
    """Write `figure` as a PNG (dpi 100) to `path` atomically, creating its folder.

    The image goes to a temporary file in the same folder first, then os.replace: a reader never sees a
    half-written PNG. The temporary name is unique per process and thread; it is opened with plain `open`
    (not tempfile.mkstemp, which would make the final PNG private to its owner) so the umask applies.
    """
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary = os.path.join(folder, f".{name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(temporary, "wb") as file:
            figure.savefig(file, format="png", dpi=100)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def uncertainty_view_figure(curves: dict[str, tuple[list[float], list[float]]], entropies: dict[str, object],
                            title: str, bins: int = 20):
    """Left: accuracy of the kept samples against the fraction rejected as most uncertain, one line per score.
    Right: histograms (densities) of normalised entropy per input set (in-distribution, corrupted, OOD)."""
    figure = _figure(figsize=(11, 4))
    left, right = figure.subplots(1, 2)
    for name, (fractions, accuracies) in curves.items():
        left.plot(fractions, accuracies, marker=".", label=name)
    left.set(xlabel="fraction rejected (most uncertain first)", ylabel="accuracy of the rest", xlim=(0, 1))
    left.grid(alpha=0.3)
    left.legend(fontsize="small")
    edges = np.linspace(0, 1, bins + 1)
    for name, values in entropies.items():
        right.hist(_numpy(values), bins=edges, density=True, histtype="step", linewidth=1.5, label=name)
    right.set(xlabel="normalized entropy H(p) / log C", ylabel="density", xlim=(0, 1))
    right.legend(fontsize="small")
    figure.suptitle(title)
    figure.tight_layout()
    return figure
