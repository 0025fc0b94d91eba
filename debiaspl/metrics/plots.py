"""Figures for reports: the data map of Dataset Cartography (Swayamdipta et al. 2020), reliability diagrams
(Guo et al. 2017), pseudo-label class distributions and q_hat over steps (DebiasPL, Wang et al. 2022) and
confusion matrices.

Figures are built with matplotlib.figure.Figure directly, never through pyplot, so nothing is left in
pyplot's global list of open figures; each function returns the Figure for the caller to save.
"""

import io
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch

from debiaspl.files import write_text
from debiaspl.metrics.cartography import AMBIGUOUS_VARIABILITY, EASY_CONFIDENCE, REGIONS, region_of
from debiaspl.metrics.uncertainty import expected_calibration_error

REGION_COLOURS = {"easy-to-learn": "tab:red", "ambiguous": "dimgrey", "hard-to-learn": "tab:blue"}


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


def _label_classes(axes, class_names: list[str], axis: str, order=None) -> None:
    """Class names as tick labels (in `order`, default by index); x labels are vertical past 10 classes or 40
    characters so none overlap."""
    names = [str(class_names[k]) for k in (range(len(class_names)) if order is None else order)]
    positions = np.arange(len(names))
    rotation = 90 if len(names) > 10 or sum(len(name) for name in names) > 40 else 0
    if axis == "x":
        axes.set_xticks(positions, names, rotation=rotation)
    else:
        axes.set_yticks(positions, names)


def _wrapped(title: str, width_inches: float, fontsize: float = 12.0) -> str:
    """`title` broken into lines that fit a figure `width_inches` wide (a character is ~0.55 em on average), so
    no title is clipped at the figure's edge, whichever its length (class names, run names)."""
    return textwrap.fill(title, max(20, int(0.9 * width_inches * 72 / (0.55 * fontsize))), break_on_hyphens=False)


def _class_colours(count: int) -> list:
    """One colour per class index, the same in every figure: tab10 up to 10 classes, tab20 up to 20, else viridis."""
    from matplotlib import colormaps
    if count <= 20:
        palette = colormaps["tab10" if count <= 10 else "tab20"]
        return [palette(k) for k in range(count)]
    return [colormaps["viridis"](k / (count - 1)) for k in range(count)]


def _evenly(total: int, max_points: int) -> np.ndarray | None:
    """Indices of an evenly spaced subset of `max_points` (deterministic, no RNG), or None when all fit.

    floor(i * total / max_points) is strictly increasing because the step total / max_points > 1."""
    return np.arange(max_points) * total // max_points if total > max_points else None


def _draw_regions(axes, variability: np.ndarray, confidence: np.ndarray, ambiguous_variability: float,
                  easy_confidence: float) -> None:
    """The data map's axes: dashed boundaries at exactly the thresholds `region_of` uses, each labelled with its
    value, and each region's name inside it where the fewest points lie under the label."""
    right = max(ambiguous_variability + 0.1, 1.05 * float(variability.max()) if len(variability) else 0.0)
    axes.set_xlim(0.0, right)
    axes.set_ylim(0.0, 1.0)
    style = dict(linestyle="--", color="black", linewidth=1.2, zorder=3)
    axes.axvline(ambiguous_variability, **style)
    axes.plot([0.0, ambiguous_variability], [easy_confidence, easy_confidence], **style)
    # at the bottom, where few points lie: a variability of v needs a confidence of at least (1 - sqrt(1 - 4 v^2)) / 2
    axes.text(ambiguous_variability, 0.015, f"variability = {ambiguous_variability:g} ", rotation=90, ha="right",
              va="bottom", fontsize=9, zorder=4)
    axes.text(0.01 * right, easy_confidence, f"confidence = {easy_confidence:g}", ha="left", va="bottom",
              fontsize=9, zorder=4)
    # (region, its box in data coordinates, box edge colour); a label is about 0.22 x 0.07 of the axes
    half_width, half_height = 0.11 * right, 0.04
    boxes = [("easy-to-learn", (0.0, ambiguous_variability), (easy_confidence, 1.0), "tab:red"),
             ("hard-to-learn", (0.0, ambiguous_variability), (0.0, easy_confidence), "tab:blue"),
             ("ambiguous", (ambiguous_variability, right), (0.0, 1.0), "black")]
    for name, (x_low, x_high), (y_low, y_high), colour in boxes:
        candidates = [(x, y) for y in np.linspace(y_low + 0.06, y_high - 0.06, 5)
                      for x in np.linspace(x_low, x_high, 5)[1:-1]]
        centre = ((x_low + x_high) / 2, (y_low + y_high) / 2)

        def covered(point):
            x, y = point
            under = (np.abs(variability - x) < half_width) & (np.abs(confidence - y) < half_height)
            return int(under.sum()), abs(x - centre[0]) / right + abs(y - centre[1])

        x, y = min(candidates, key=covered)
        axes.text(x, y, name, ha="center", va="center", fontsize=12, zorder=5,
                  bbox=dict(boxstyle="round,pad=0.3", ec=colour, lw=2, fc="white", alpha=0.85))


def data_map_figure(confidence, variability, correctness, title: str, max_points: int = 25000,
                    correctness_label: str = "correctness: fraction of epochs the prediction was right",
                    ambiguous_variability: float = AMBIGUOUS_VARIABILITY, easy_confidence: float = EASY_CONFIDENCE):
    """Data map: x = variability, y = confidence, colour = correctness in [0, 1] with a labelled colour bar.

    confidence, variability, correctness: [N]. Points with any nan are dropped; above `max_points` an evenly
    spaced subset is drawn. Dashed lines and labels show the regions of `region_of` at the same thresholds.
    """
    confidence, variability, correctness = _numpy(confidence), _numpy(variability), _numpy(correctness)
    keep = ~(np.isnan(confidence) | np.isnan(variability) | np.isnan(correctness))
    confidence, variability, correctness = confidence[keep], variability[keep], correctness[keep]
    chosen = _evenly(len(confidence), max_points)
    if chosen is not None:
        title = f"{title} ({max_points} of {len(confidence)} samples)"
        confidence, variability, correctness = confidence[chosen], variability[chosen], correctness[chosen]

    figure = _figure(figsize=(8, 6))
    axes = figure.add_subplot()
    points = axes.scatter(variability, confidence, c=correctness, cmap="coolwarm", vmin=0.0, vmax=1.0, s=8,
                          alpha=0.7, linewidths=0)
    figure.colorbar(points, ax=axes, label=_wrapped(correctness_label, 5.5, 10))
    _draw_regions(axes, variability, confidence, ambiguous_variability, easy_confidence)
    axes.set_xlabel("variability (std of the target's probability over epochs)")
    axes.set_ylabel("confidence (mean probability of the target)")
    axes.set_title(_wrapped(title, 6.5))
    figure.tight_layout()
    return figure


def data_map_by_class_figure(confidence, variability, labels, class_names: list[str], title: str,
                             max_points: int = 25000, ambiguous_variability: float = AMBIGUOUS_VARIABILITY,
                             easy_confidence: float = EASY_CONFIDENCE):
    """Left: the data map coloured by class. Right: the share of each region among each class's samples, classes
    from head (most samples) to tail, with each class's number of samples above its bar.

    confidence, variability: [N]; labels: [N] class index of each sample. Samples with a nan are dropped.
    """
    confidence, variability = _numpy(confidence), _numpy(variability)
    labels = _numpy(labels).astype(np.int64)
    keep = ~(np.isnan(confidence) | np.isnan(variability))
    confidence, variability, labels = confidence[keep], variability[keep], labels[keep]
    num_classes = len(class_names)
    counts = np.bincount(labels, minlength=num_classes)
    order = np.argsort(-counts, kind="stable")  # head to tail
    regions = region_of(confidence, variability, ambiguous_variability, easy_confidence)
    shares = {region: np.array([(regions[labels == k] == region).mean() if counts[k] else 0.0 for k in order])
              for region in REGIONS}
    chosen = _evenly(len(confidence), max_points)
    if chosen is not None:
        title = f"{title} (map: {max_points} of {len(confidence)} samples)"
        confidence, variability, labels = confidence[chosen], variability[chosen], labels[chosen]

    figure = _figure(figsize=(13, 5.5), layout="constrained")
    left, right = figure.subplots(1, 2)
    colours = _class_colours(num_classes)
    if num_classes <= 20:
        for k in order:  # the tail drawn last, on top
            member = labels == k
            left.scatter(variability[member], confidence[member], color=colours[k], s=8, alpha=0.7, linewidths=0,
                         label=f"{class_names[k]} ({counts[k]})")
        left.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", markerscale=2,
                    title="class (samples)\nhead to tail")
    else:
        points = left.scatter(variability, confidence, c=labels, cmap="viridis", s=8, alpha=0.7, linewidths=0)
        figure.colorbar(points, ax=left, label="class index")
    _draw_regions(left, variability, confidence, ambiguous_variability, easy_confidence)
    left.set_xlabel("variability")
    left.set_ylabel("confidence")
    left.set_title("data map by class")

    bottom = np.zeros(num_classes)
    for region in REGIONS:
        right.bar(np.arange(num_classes), shares[region], bottom=bottom, width=0.8, label=region,
                  color=REGION_COLOURS[region])
        bottom += shares[region]
    for position, k in enumerate(order):
        right.text(position, 1.01, str(counts[k]), ha="center", va="bottom", fontsize=7,
                   rotation=90 if num_classes > 10 else 0)
    _label_classes(right, class_names, "x", order)
    right.set_ylim(0.0, 1.12)
    right.set_xlim(-0.6, num_classes - 0.4)
    right.set_xlabel("class, head (most samples) to tail; its number of samples above the bar")
    right.set_ylabel("share of the class's samples")
    right.set_title("regions per class")
    right.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", title="region")
    figure.suptitle(_wrapped(title, 13))
    return figure


def reliability_diagram_figure(count, confidence_sum, correct_sum, title: str):
    """Accuracy of each confidence bin against the diagonal, the gap shaded, the ECE in the title; under it the
    number of samples in each bin (log scale, each written above its bar).

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

    figure = _figure(figsize=(6, 7.5))
    axes, counts_axes = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [4, 1.3]})
    axes.bar(left[filled], accuracy, width=1.0 / bins, align="edge", color="tab:blue", edgecolor="black",
             label="accuracy")
    axes.bar(left[filled], confidence - accuracy, bottom=accuracy, width=1.0 / bins, align="edge",
             color="tab:red", alpha=0.3, hatch="//", edgecolor="tab:red", label="gap to confidence")
    axes.plot([0.0, 1.0], [0.0, 1.0], linestyle="--", color="grey", label="perfect calibration")
    axes.set_xlim(0.0, 1.0)
    axes.set_ylim(0.0, 1.0)
    axes.set_ylabel("accuracy")
    axes.legend(loc="upper left")
    axes.set_title(f"{_wrapped(title, 6)}\nECE = {100 * ece:.2f}%")

    counts_axes.bar(left[filled], count[filled], width=1.0 / bins, align="edge", color="silver", edgecolor="black")
    for x, value in zip(left[filled], count[filled]):
        counts_axes.text(x + 0.5 / bins, value, f" {int(value)}", ha="center", va="bottom", fontsize=7,
                         rotation=90 if bins > 10 else 0)
    if filled.any():
        counts_axes.set_yscale("log")
        counts_axes.set_ylim(0.5, count.max() * 40)  # room for the counts above the bars
    counts_axes.set_xlabel("confidence")
    counts_axes.set_ylabel("samples")
    figure.tight_layout()
    return figure


def class_shares_figure(class_names: list[str], series: dict[str, object], title: str,
                        ylabel: str = "fraction of samples", xlabel: str = "class", reference: str | None = None):
    """Grouped bars of [C] class distributions, one colour per series, each normalised to sum 1 (an all-zero
    one is drawn as zeros); series `reference` (the truth) is dark grey in every figure. The legend sits outside
    the axes, so it covers no bar."""
    series = {label: _numpy(values) for label, values in series.items()}
    for label, values in series.items():
        if len(values) != len(class_names):
            raise ValueError(f"{label} has {len(values)} entries for {len(class_names)} classes")
    width = 0.8 / len(series)
    positions = np.arange(len(class_names))
    figure_width = min(30.0, max(8.0, 0.15 * len(series) * len(class_names) + 4.0))  # 3 inches of it for the legend

    figure = _figure(figsize=(figure_width, 4.5))
    axes = figure.add_subplot()
    for offset, (label, values) in enumerate(series.items()):
        total = values.sum()
        axes.bar(positions + (offset - (len(series) - 1) / 2) * width, values / total if total > 0 else values,
                 width=width, label=label, color="dimgrey" if label == reference else f"C{offset}")
    _label_classes(axes, class_names, "x")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    axes.set_title(_wrapped(title, figure_width - 3.0))
    figure.tight_layout()
    return figure


def class_distribution_figure(class_names: list[str], estimated, true, title: str, estimated_label: str = "q_hat",
                              true_label: str = "true"):
    """Grouped bars of two [C] class distributions, each normalised to sum 1; `true` may be None."""
    series = {estimated_label: estimated, **({} if true is None else {true_label: true})}
    return class_shares_figure(class_names, series, title, reference=true_label)


def class_marginal_history_figure(class_names: list[str], steps, history, true, title: str):
    """q_hat of each class over steps (solid, log scale) and its true share (dashed, the same colour).

    steps: [T]; history: [T, C] q_hat at those steps; true: [C] or None. A non-positive true share is not drawn.
    """
    from matplotlib.lines import Line2D
    history = _numpy(history).reshape(len(steps), len(class_names))
    colours = _class_colours(len(class_names))
    figure = _figure(figsize=(10, 5.5), layout="constrained")
    axes = figure.add_subplot()
    for k, name in enumerate(class_names):
        axes.plot(steps, history[:, k], color=colours[k], linewidth=1.6, marker="." if len(steps) <= 30 else None,
                  label=str(name))
        if true is not None and float(true[k]) > 0:
            axes.axhline(float(true[k]), color=colours[k], linestyle="--", linewidth=1.0)
    axes.set_yscale("log")
    axes.set_xlabel("step")
    axes.set_ylabel("q_hat (solid), true unlabeled share (dashed)")
    axes.grid(alpha=0.3, which="both")
    handles = [Line2D([], [], color="black", linewidth=1.6, label="q_hat"),
               Line2D([], [], color="black", linestyle="--", linewidth=1.0, label="true share")]
    if len(class_names) <= 20:
        handles += axes.get_legend_handles_labels()[0]
    axes.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", title="class")
    axes.set_title(_wrapped(title, 8))
    return figure


def confusion_matrix_figure(confusion, class_names: list[str], title: str, xlabel: str = "predicted class",
                            ylabel: str = "true class"):
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

    size = max(6.0, 0.45 * num_classes + 2)
    figure = _figure(figsize=(size + 1, size))
    axes = figure.add_subplot()
    image = axes.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    # fraction / pad sized so the colour bar is as tall as the square heat map.
    figure.colorbar(image, ax=axes, label="fraction of the true class (row)", fraction=0.046, pad=0.04)
    if num_classes <= 20:
        for row, column in zip(*np.nonzero(~np.isnan(normalised))):
            value = normalised[row, column]
            axes.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=8,
                      color="white" if value > 0.5 else "black")
    _label_classes(axes, class_names, "x")
    _label_classes(axes, class_names, "y")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(_wrapped(title, size))
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


def figure_png(figure) -> bytes:
    """`figure` rendered once as PNG bytes (dpi 100): the run folder's file and TensorBoard's image are these."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def save_figure(figure, path) -> None:
    """Write `figure` as a PNG (dpi 100) to `path` atomically, creating its folder."""
    write_text(Path(path), figure_png(figure))


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
