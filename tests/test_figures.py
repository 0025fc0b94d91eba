"""The figures as a user reads them: every text inside the image, labelled axes, the data map's regions drawn at the
thresholds that assign them, per-class views that count right, counts on the reliability diagram."""

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba

from debiaspl.metrics.cartography import AMBIGUOUS_VARIABILITY, EASY_CONFIDENCE, REGIONS, region_of
from debiaspl.metrics.plots import (class_distribution_figure, class_marginal_history_figure, class_shares_figure,
                                    confusion_matrix_figure, data_map_by_class_figure, data_map_figure,
                                    reliability_diagram_figure)

NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def assert_no_text_clipped(figure):
    """Everything drawn (titles, labels, tick labels, legends, colour bars) lies inside the image, on the Agg
    canvas that figure_png draws on for the PNG file and TensorBoard alike."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    drawn, image = figure.get_tightbbox(canvas.get_renderer()), figure.bbox_inches  # inches
    assert image.x0 - 0.01 <= drawn.x0 and drawn.x1 <= image.x1 + 0.01 and image.y0 - 0.01 <= drawn.y0 and \
        drawn.y1 <= image.y1 + 0.01, f"drawn {drawn.bounds} outside the figure {image.bounds}"


def a_data_map(size=300):
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.0, 1.0, size)
    variability = rng.uniform(0.0, 0.3, size)
    return confidence, variability, rng.uniform(0.0, 1.0, size)


def dashed_guides(axes):
    """[(xdata, ydata)] of the dashed lines on the axes."""
    return [(list(line.get_xdata()), list(line.get_ydata())) for line in axes.lines if line.get_linestyle() == "--"]


@pytest.mark.parametrize("thresholds", [None, (0.3, 0.7)])
def test_data_map_guides_and_labels_are_where_region_of_draws_the_regions(thresholds):
    confidence, variability, correctness = a_data_map()
    if thresholds is None:  # the defaults of both, so a change of one constant moves the figure with the rule
        figure, rule = data_map_figure(confidence, variability, correctness, "map"), region_of
        ambiguous_variability, easy_confidence = AMBIGUOUS_VARIABILITY, EASY_CONFIDENCE
    else:
        ambiguous_variability, easy_confidence = thresholds
        figure = data_map_figure(confidence, variability, correctness, "map",
                                 ambiguous_variability=ambiguous_variability, easy_confidence=easy_confidence)
        rule = lambda c, v: region_of(c, v, ambiguous_variability, easy_confidence)  # noqa: E731
    axes = figure.axes[0]
    vertical, horizontal = dashed_guides(axes)
    assert vertical[0] == [ambiguous_variability] * 2 and vertical[1] == [0, 1]
    assert horizontal == ([0.0, ambiguous_variability], [easy_confidence] * 2)
    texts = {text.get_text().strip(): text for text in axes.texts}
    assert f"variability = {ambiguous_variability:g}" in texts and f"confidence = {easy_confidence:g}" in texts
    # each region's name sits inside the region the rule assigns there
    for region in REGIONS:
        x, y = texts[region].get_position()
        assert rule(np.array([y]), np.array([x]))[0] == region, region
    # the rule's boundaries are the guides: either side of each line
    eps = 1e-9
    c = np.array([easy_confidence, easy_confidence - eps, 0.05, 0.95])
    v = np.array([ambiguous_variability - eps] * 2 + [ambiguous_variability] * 2)
    assert rule(c, v).tolist() == ["easy-to-learn", "hard-to-learn", "ambiguous", "ambiguous"]
    assert axes.get_xlim()[1] > ambiguous_variability  # the ambiguous region is on the map
    assert "correctness" in figure.axes[1].get_ylabel() and "fraction of epochs" in figure.axes[1].get_ylabel()
    assert axes.get_xlabel().startswith("variability") and axes.get_ylabel().startswith("confidence")
    assert_no_text_clipped(figure)


def test_data_map_region_labels_avoid_the_points():
    # the easy-to-learn region is full of points except in its lower part: its label goes there
    variability = np.tile(np.linspace(0.0, 0.19, 40), 20)
    confidence = np.repeat(np.linspace(0.75, 1.0, 20), 40)
    figure = data_map_figure(confidence, variability, np.ones_like(confidence), "crowded")
    label = next(text for text in figure.axes[0].texts if text.get_text() == "easy-to-learn")
    assert label.get_position()[1] < 0.7


def test_data_map_by_class_counts_regions_head_to_tail():
    names = ["few", "many", "some"]
    # class 1 (4 samples): 3 easy, 1 ambiguous; class 2 (2): 1 hard, 1 ambiguous; class 0 (1): 1 ambiguous
    confidence = np.array([0.9, 0.9, 0.9, 0.6, 0.2, 0.5, 0.5, np.nan])
    variability = np.array([0.05, 0.05, 0.05, 0.3, 0.05, 0.25, 0.3, 0.1])
    labels = np.array([1, 1, 1, 1, 2, 2, 0, 0])  # the nan sample (class 0) is dropped
    figure = data_map_by_class_figure(confidence, variability, labels, names, "by class")
    scatter, bars = figure.axes[0], figure.axes[1]
    assert [label.get_text() for label in bars.get_xticklabels()] == ["many", "some", "few"]
    heights = {container.get_label(): [patch.get_height() for patch in container.patches]
               for container in bars.containers}
    expected = {"easy-to-learn": [0.75, 0.0, 0.0], "ambiguous": [0.25, 0.5, 1.0], "hard-to-learn": [0.0, 0.5, 0.0]}
    assert list(heights) == list(expected)
    for region, shares in expected.items():
        assert heights[region] == pytest.approx(shares), region
    assert [text.get_text() for text in bars.texts] == ["4", "2", "1"]  # samples per class above the bars
    legend = [text.get_text() for text in scatter.get_legend().get_texts()]
    assert legend == ["many (4)", "some (2)", "few (1)"]
    assert scatter.get_xlabel() == "variability" and "head" in bars.get_xlabel()
    assert sum(len(collection.get_offsets()) for collection in scatter.collections) == 7
    assert_no_text_clipped(figure)
    many = data_map_by_class_figure(np.full(50, 0.9), np.full(50, 0.1), np.arange(50) % 25,
                                    [f"class {k}" for k in range(25)], "25 classes")
    assert many.axes[0].get_legend() is None and len(many.axes) == 3  # a colour bar of class index instead


def test_reliability_diagram_shows_the_samples_per_bin():
    count = torch.tensor([0, 3, 0, 120, 5000])
    confidence_sum = count * torch.tensor([0.1, 0.3, 0.5, 0.7, 0.95])
    figure = reliability_diagram_figure(count, confidence_sum, count * 0.8, "pseudo-labels, a long title " * 3)
    counts = figure.axes[1]
    assert [patch.get_height() for patch in counts.containers[0].patches] == [3, 120, 5000]
    assert [text.get_text().strip() for text in counts.texts] == ["3", "120", "5000"]
    assert counts.get_ylabel() == "samples" and counts.get_xlabel() == "confidence"
    assert "ECE = " in figure.axes[0].get_title()
    assert_no_text_clipped(figure)


def test_class_marginal_history_pairs_each_class_with_its_true_share():
    steps, history = [100, 200, 300], torch.tensor([[0.5, 0.3, 0.2], [0.6, 0.3, 0.1], [0.7, 0.2, 0.1]])
    true = torch.tensor([0.6, 0.3, 0.1])
    figure = class_marginal_history_figure(NAMES[:3], steps, history, true, "q_hat per class over steps")
    axes = figure.axes[0]
    solid = [line for line in axes.lines if line.get_linestyle() == "-"]
    dashed = [line for line in axes.lines if line.get_linestyle() == "--"]
    assert np.allclose([line.get_ydata() for line in solid], history.T.numpy())
    assert [line.get_ydata()[0] for line in dashed] == pytest.approx(true.tolist())
    assert [line.get_color() for line in solid] == [line.get_color() for line in dashed]
    assert len({line.get_color() for line in solid}) == 3
    assert axes.get_yscale() == "log" and axes.get_xlabel() == "step" and "true" in axes.get_ylabel()
    legend = [text.get_text() for text in axes.get_legend().get_texts()]
    assert legend[:2] == ["q_hat", "true share"] and legend[2:] == NAMES[:3]
    assert_no_text_clipped(figure)


def test_class_bars_and_confusion_matrix_keep_titles_and_labels_inside():
    long_title = "pseudo-labels vs hidden labels (rows: truth), interval ending at step 262144"
    figure = confusion_matrix_figure(torch.eye(10) * 5 + 1, NAMES, long_title, xlabel="pseudo-label",
                                     ylabel="true class (hidden label)")
    axes = figure.axes[0]
    assert axes.get_xlabel() == "pseudo-label" and axes.get_ylabel() == "true class (hidden label)"
    assert axes.get_title().replace("\n", " ") == long_title
    assert_no_text_clipped(figure)
    figure = class_distribution_figure(NAMES, torch.arange(10.0) + 1, torch.ones(10), "q_hat vs true " * 6)
    assert figure.axes[0].get_xlabel() == "class" and figure.axes[0].get_ylabel() == "fraction of samples"
    assert_no_text_clipped(figure)
    series = {"before debiasing (raw argmax)": torch.arange(10.0), "pseudo-labels (debiased)": torch.ones(10),
              "confident pseudo-labels (in the loss)": torch.ones(10), "true unlabeled share": torch.ones(10)}
    figure = class_shares_figure(NAMES, series, "pseudo-labels per class, steps 1-500", reference="true unlabeled share")
    assert [text.get_text() for text in figure.axes[0].get_legend().get_texts()] == list(series)
    grey = to_rgba("dimgrey")  # the truth has one colour in every bar chart, whichever series come before it
    assert [container.patches[0].get_facecolor() == grey for container in figure.axes[0].containers] == \
        [False, False, False, True]
    truth_bars = class_distribution_figure(NAMES, torch.ones(10), torch.ones(10), "q_hat").axes[0].containers[1]
    assert truth_bars.patches[0].get_facecolor() == grey
    assert [label.get_text() for label in figure.axes[0].get_xticklabels()] == NAMES
    assert_no_text_clipped(figure)
