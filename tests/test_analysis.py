"""Pseudo-label analysis: distribution drift, entropy / calibration, Dataset Cartography, figures."""

import json
import math
import os

import numpy as np
import pytest
import torch

from debiaspl.metrics.cartography import (NEVER_LEARNED, TD_METRICS_COLUMNS, region_of, td_metrics_records,
                                           top_k, training_dynamics_metrics)
from debiaspl.metrics.distribution import (confusion_update, count_ratio, imbalance_ratio, kl_divergence,
                                            per_class_precision_recall)
from debiaspl.metrics.plots import (class_distribution_figure, confusion_matrix_figure, data_map_figure,
                                     reliability_diagram_figure, save_figure)
from debiaspl.metrics.uncertainty import (auroc_from_histograms, calibration_update, ece_from_predictions,
                                           expected_calibration_error, histogram_update, normalized_entropy)

nan = math.nan


def assert_close(actual, expected):
    """Element-wise equality up to 1e-9 with nan == nan."""
    np.testing.assert_allclose(np.asarray(actual, dtype=float), np.asarray(expected, dtype=float), rtol=1e-9,
                               atol=1e-12, equal_nan=True)


# distribution ----------------------------------------------------------------------------------------------

def test_kl_divergence_by_hand():
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert kl_divergence(torch.tensor([0.5, 0.5]), torch.tensor([0.25, 0.75]), eps=0.0) == pytest.approx(expected)
    # Counts are normalised first, and the default eps barely moves a distribution without empty classes.
    assert kl_divergence(torch.tensor([2, 2]), torch.tensor([1, 3])) == pytest.approx(expected, rel=1e-6)
    p = torch.tensor([0.1, 0.2, 0.7])
    assert kl_divergence(p, p) == pytest.approx(0.0, abs=1e-12)
    assert kl_divergence(p, torch.tensor([0.7, 0.2, 0.1])) > 0


def test_kl_divergence_empty_class_is_finite():
    # q has no mass on class 1: 0.5 ln(0.5 / 1) + 0.5 ln(0.5 / 1e-8), up to eps in the normalisers.
    value = kl_divergence(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0]))
    assert value == pytest.approx(0.5 * math.log(0.5) + 0.5 * math.log(0.5 / 1e-8), rel=1e-6)
    assert math.isnan(kl_divergence(torch.zeros(0), torch.zeros(0)))


def test_imbalance_ratio_floors_an_empty_class_at_one():
    assert imbalance_ratio(torch.tensor([10, 0, 5])) == 10.0
    assert imbalance_ratio(torch.tensor([10, 2, 5])) == 5.0
    assert math.isnan(imbalance_ratio(torch.tensor([0, 0])))
    assert math.isnan(imbalance_ratio(torch.zeros(0, dtype=torch.int64)))


def test_confusion_update_then_precision_recall_count_ratio():
    # Class 3 is predicted once but never true; class 4 is neither predicted nor true.
    true_labels = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    predicted = torch.tensor([0, 0, 1, 1, 2, 2, 3])
    confusion = torch.zeros(5, 5, dtype=torch.int64)
    confusion_update(confusion, true_labels[:4], predicted[:4])  # accumulates over batches
    confusion_update(confusion, true_labels[4:], predicted[4:])
    confusion_update(confusion, true_labels[:0], predicted[:0])  # an empty batch changes nothing
    expected = torch.zeros(5, 5, dtype=torch.int64)
    expected[:4, :4] = torch.tensor([[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1], [0, 0, 0, 0]])
    assert torch.equal(confusion, expected)

    precision, recall = per_class_precision_recall(confusion)
    assert precision.dtype == recall.dtype == torch.float64
    assert_close(precision, [2 / 2, 1 / 2, 1 / 2, 0 / 1, nan])
    assert_close(recall, [2 / 3, 1 / 2, 1 / 2, nan, nan])
    # predicted as c / truly c: class 3 has a prediction but no true sample -> nan, not inf.
    assert_close(count_ratio(confusion), [2 / 3, 2 / 2, 2 / 2, nan, nan])


# uncertainty -----------------------------------------------------------------------------------------------

def test_normalized_entropy_by_hand():
    probs = torch.tensor([[0.25, 0.25, 0.25, 0.25], [0.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    entropy = normalized_entropy(probs)
    assert entropy.dtype == torch.float32 and entropy.shape == (2,)
    assert entropy.tolist() == pytest.approx([1.0, 0.0], abs=1e-6)
    # -(1/4 ln 1/4 + 3/4 ln 3/4) / ln 2 = 1/2 + 3/4 log2(4/3)
    two_class = normalized_entropy(torch.tensor([[0.25, 0.75]]))
    assert two_class.item() == pytest.approx(0.5 + 0.75 * math.log2(4 / 3), abs=1e-6)
    assert torch.equal(normalized_entropy(torch.ones(3, 1)), torch.zeros(3))
    assert normalized_entropy(torch.zeros(0, 4)).shape == (0,)


def test_histogram_update_edges_out_of_range_and_nan():
    counts = torch.zeros(4, dtype=torch.int64)
    values = torch.tensor([0.0, 1.0, -0.5, 1.5, 0.25, 0.5, 0.74, nan, math.inf, -math.inf])
    histogram_update(counts, values)
    # bins [0, .25) [.25, .5) [.5, .75) [.75, 1]: 0, -0.5, -inf | 0.25 | 0.5, 0.74 | 1, 1.5, inf; nan ignored
    assert counts.tolist() == [3, 1, 2, 3]
    histogram_update(counts, torch.zeros(0))
    assert counts.tolist() == [3, 1, 2, 3]
    ranged = torch.zeros(2, dtype=torch.int64)
    histogram_update(ranged, torch.tensor([2.0, 2.99, 3.0, 4.0]), low=2.0, high=4.0)
    assert ranged.tolist() == [2, 2]
    with pytest.raises(ValueError, match="low < high"):
        histogram_update(ranged, torch.zeros(1), low=1.0, high=1.0)
    selected = torch.zeros(4, dtype=torch.int64)
    histogram_update(selected, values, where=torch.tensor([True, True, False, False, True, False, False, True,
                                                            False, False]))
    assert selected.tolist() == [1, 1, 0, 1]  # 0.0, 0.25 and 1.0; the selected nan still ignored


def brute_force_auroc(positive_scores, negative_scores):
    wins = sum((p > n) + 0.5 * (p == n) for p in positive_scores for n in negative_scores)
    return wins / (len(positive_scores) * len(negative_scores))


def test_auroc_from_histograms_matches_pairwise_count_with_ties():
    generator = torch.Generator().manual_seed(0)
    for num_positive, num_negative in [(40, 60), (7, 3), (1, 25)]:
        positive_scores = torch.randint(0, 8, (num_positive,), generator=generator)
        negative_scores = torch.randint(0, 6, (num_negative,), generator=generator)
        auroc = auroc_from_histograms(torch.bincount(positive_scores, minlength=8),
                                      torch.bincount(negative_scores, minlength=8))
        assert auroc == pytest.approx(brute_force_auroc(positive_scores.tolist(), negative_scores.tolist()),
                                      abs=1e-12)


def test_auroc_from_histograms_perfect_inverted_tied_empty():
    low, high = torch.tensor([2, 0, 0]), torch.tensor([0, 1, 3])
    assert auroc_from_histograms(high, low) == 1.0
    assert auroc_from_histograms(low, high) == 0.0
    assert auroc_from_histograms(torch.tensor([0, 5, 0]), torch.tensor([0, 2, 0])) == 0.5
    assert math.isnan(auroc_from_histograms(torch.zeros(3), high))
    assert math.isnan(auroc_from_histograms(high, torch.zeros(3)))


def test_expected_calibration_error_by_hand():
    count = torch.zeros(2, dtype=torch.int64)
    confidence_sum = torch.zeros(2, dtype=torch.float64)
    correct_sum = torch.zeros(2, dtype=torch.float64)
    assert math.isnan(expected_calibration_error(count, confidence_sum, correct_sum))
    calibration_update(count, confidence_sum, correct_sum, torch.tensor([0.2, 0.9, nan]),
                       torch.tensor([True, False, True]))
    assert count.tolist() == [1, 1]  # the nan confidence is ignored
    assert confidence_sum.tolist() == pytest.approx([0.2, 0.9])
    assert correct_sum.tolist() == [1.0, 0.0]
    # (1/2) |1 - 0.2| + (1/2) |0 - 0.9|
    assert expected_calibration_error(count, confidence_sum, correct_sum) == pytest.approx(0.85)


def test_ece_matches_brute_force_on_random_predictions():
    generator = torch.Generator().manual_seed(1)
    probs = torch.softmax(2 * torch.randn(500, 5, generator=generator, dtype=torch.float64), dim=1)
    labels = torch.randint(0, 5, (500,), generator=generator)
    bins = 15
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == labels).double()
    bin_of = (confidence * bins).floor().long().clamp(max=bins - 1)
    expected = 0.0
    for b in range(bins):
        members = bin_of == b
        if members.any():
            expected += members.sum().item() / 500 * abs(correct[members].mean().item()
                                                         - confidence[members].mean().item())
    assert expected > 0.01
    assert ece_from_predictions(probs, labels, bins=bins) == pytest.approx(expected, abs=1e-12)
    assert math.isnan(ece_from_predictions(torch.zeros(0, 5), torch.zeros(0, dtype=torch.int64)))


def test_ece_is_zero_when_calibrated():
    # Four samples at confidence 0.75 with three right, two at 0.5 with one right.
    probs = torch.tensor([[0.75, 0.25]] * 4 + [[0.5, 0.5]] * 2)
    labels = torch.tensor([0, 0, 0, 1, 0, 1])
    assert ece_from_predictions(probs, labels) == pytest.approx(0.0, abs=1e-12)
    assert ece_from_predictions(probs, 1 - labels) > 0.2


def test_device_accumulators_never_read_values():
    # Meta tensors have no data: .item(), .tolist(), .cpu() or a boolean mask would raise, as a host sync would.
    def meta(*shape, dtype=torch.float32):
        return torch.zeros(*shape, dtype=dtype, device="meta")
    confusion_update(meta(3, 3, dtype=torch.int64), meta(8, dtype=torch.int64), meta(8, dtype=torch.int64))
    histogram_update(meta(10, dtype=torch.int64), meta(8))
    calibration_update(meta(10, dtype=torch.int64), meta(10, dtype=torch.float64), meta(10, dtype=torch.float64),
                       meta(8), meta(8, dtype=torch.bool))
    assert normalized_entropy(meta(8, 4)).shape == (8,)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_accumulators_do_not_sync_on_cuda():
    cuda = torch.device("cuda")
    values, labels = torch.rand(64, device=cuda), torch.randint(0, 3, (64,), device=cuda)
    counts = torch.zeros(10, dtype=torch.int64, device=cuda)
    confusion = torch.zeros(3, 3, dtype=torch.int64, device=cuda)
    sums = [torch.zeros(10, dtype=torch.float64, device=cuda) for _ in range(2)]
    torch.cuda.set_sync_debug_mode("error")
    try:
        confusion_update(confusion, labels, labels)
        histogram_update(counts, values)
        calibration_update(counts, *sums, values, labels == 0)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert confusion.trace().item() == 64


# cartography -----------------------------------------------------------------------------------------------

def hand_dynamics():
    """4 samples x 4 epochs: sample 0 misses epoch 2, sample 2 is never right, sample 3 is never observed."""
    target_prob = torch.tensor([[0.2, 0.6, nan, 0.4],
                                [0.9, 0.3, 0.8, 0.2],
                                [0.1, 0.1, 0.3, 0.1],
                                [nan, nan, nan, nan]], dtype=torch.float64)
    correct = torch.tensor([[0, 1, -1, 0],
                            [1, 0, 1, 0],
                            [0, 0, 0, 0],
                            [-1, -1, -1, -1]], dtype=torch.int8)
    return target_prob, correct


def test_training_dynamics_metrics_by_hand():
    metrics = training_dynamics_metrics(*hand_dynamics())
    # sample 0 over its 3 observed epochs: mean .4, deviations -.2 .2 0; sample 1: mean .55, deviations
    # .35 -.25 .25 -.35; sample 2: mean .15, deviations -.05 -.05 .15 -.05.
    assert_close(metrics["confidence"], [0.4, 0.55, 0.15, nan])
    variances = [(0.04 + 0.04 + 0.0) / 3, (0.1225 + 0.0625 + 0.0625 + 0.1225) / 4, (3 * 0.0025 + 0.0225) / 4]
    assert_close(metrics["variability"], [math.sqrt(v) for v in variances] + [nan])
    assert_close(metrics["correctness"], [1 / 3, 2 / 4, 0 / 4, nan])
    assert metrics["correct_count"].tolist() == [1, 2, 0, 0]
    # Sample 0 is right at epoch 1 and wrong at epoch 3: forgotten once across the unobserved epoch 2.
    # Sample 1: right, wrong, right, wrong = twice. Samples 2 and 3 were never right: allenai's 1000.
    assert metrics["forgetfulness"].tolist() == [1, 2, NEVER_LEARNED, NEVER_LEARNED]
    assert_close(metrics["threshold_closeness"], [0.4 * 0.6, 0.55 * 0.45, 0.15 * 0.85, nan])
    assert metrics["epochs_observed"].tolist() == [3, 4, 4, 0]


def allenai_forgetfulness(trend):
    """allenai/cartography's compute_forgetfulness, transcribed as the reference."""
    if not any(trend):
        return 1000
    learnt, forgotten = False, 0
    for is_correct in trend:
        if learnt and not is_correct:
            learnt, forgotten = False, forgotten + 1
        elif not learnt and is_correct:
            learnt = True
    return forgotten


def test_training_dynamics_metrics_match_per_sample_reference():
    generator = torch.Generator().manual_seed(2)
    target_prob = torch.rand(60, 7, generator=generator, dtype=torch.float64)
    correct = (torch.rand(60, 7, generator=generator) < 0.5).to(torch.int8)
    unobserved = torch.rand(60, 7, generator=generator) < 0.3
    target_prob[unobserved], correct[unobserved] = nan, -1
    metrics = training_dynamics_metrics(target_prob, correct)
    for n in range(60):
        seen = ~unobserved[n]
        if not seen.any():
            continue
        trend = correct[n][seen].tolist()
        assert metrics["forgetfulness"][n].item() == allenai_forgetfulness(trend)
        assert metrics["confidence"][n].item() == pytest.approx(np.mean(target_prob[n][seen].numpy()))
        assert metrics["variability"][n].item() == pytest.approx(np.std(target_prob[n][seen].numpy()))
        assert metrics["correct_count"][n].item() == sum(trend)


def test_training_dynamics_metrics_rejects_disagreeing_masks_and_handles_empty():
    target_prob, correct = hand_dynamics()
    correct[0, 2] = 0  # observed per `correct`, NaN per `target_prob`
    with pytest.raises(ValueError, match="disagree"):
        training_dynamics_metrics(target_prob, correct)
    assert training_dynamics_metrics(torch.zeros(0, 4), torch.zeros(0, 4, dtype=torch.int8))["confidence"].shape == (0,)
    no_epochs = training_dynamics_metrics(torch.zeros(2, 0), torch.zeros(2, 0, dtype=torch.int8))
    assert no_epochs["confidence"].isnan().all() and no_epochs["forgetfulness"].tolist() == [1000, 1000]


def test_region_of_rule():
    regions = region_of(torch.tensor([0.9, 0.9, 0.3, nan, 0.5, 0.1]), torch.tensor([0.05, 0.25, 0.1, 0.1, 0.1, 0.2]))
    assert regions.tolist() == ["easy-to-learn", "ambiguous", "hard-to-learn", "unobserved", "easy-to-learn",
                                "ambiguous"]


def test_top_k_orderings_nan_last_ties_by_index():
    metrics = {"variability": torch.tensor([0.1, 0.3, nan, 0.3, 0.2], dtype=torch.float64),
               "confidence": torch.tensor([0.5, 0.9, nan, 0.1, 0.9], dtype=torch.float64)}
    assert top_k("ambiguous", metrics, 5).tolist() == [1, 3, 4, 0, 2]
    assert top_k("hard-to-learn", metrics, 5).tolist() == [3, 0, 1, 4, 2]
    assert top_k("easy-to-learn", metrics, 5).tolist() == [1, 4, 0, 3, 2]
    assert top_k("ambiguous", metrics, 2).tolist() == [1, 3]
    assert top_k("ambiguous", metrics, 50).tolist() == [1, 3, 4, 0, 2]
    assert top_k("ambiguous", metrics, 0).tolist() == []
    with pytest.raises(ValueError, match="unknown region"):
        top_k("variability", metrics, 3)


def test_td_metrics_records_have_allenai_columns():
    records = td_metrics_records(["a", "b", "c", "d"], training_dynamics_metrics(*hand_dynamics()))
    assert TD_METRICS_COLUMNS == ("guid", "index", "threshold_closeness", "confidence", "variability",
                                  "correctness", "forgetfulness")
    assert all(list(record) == list(TD_METRICS_COLUMNS) for record in records)
    assert records[1]["guid"] == "b" and records[1]["index"] == 1
    assert records[1]["correctness"] == 2 and type(records[1]["correctness"]) is int
    assert records[2]["forgetfulness"] == 1000 and type(records[2]["forgetfulness"]) is int
    assert records[0]["confidence"] == pytest.approx(0.4)
    assert records[3]["confidence"] is None  # nan -> JSON null
    json.dumps(records, allow_nan=False)
    with pytest.raises(ValueError, match="3 guids"):
        td_metrics_records(["a", "b", "c"], training_dynamics_metrics(*hand_dynamics()))


# figures ---------------------------------------------------------------------------------------------------

def test_data_map_figure_drops_nan_and_subsamples_evenly():
    confidence = torch.linspace(0, 1, 30, dtype=torch.float64)
    variability = torch.linspace(0, 0.5, 30, dtype=torch.float64)
    correctness = torch.linspace(0, 1, 30, dtype=torch.float64)
    confidence[[3, 7]] = nan
    figure = data_map_figure(confidence, variability, correctness, "digits")
    axes = figure.axes[0]
    assert len(figure.axes) == 2  # the map and its colour bar
    assert axes.collections[0].get_offsets().shape == (28, 2)
    assert {"easy-to-learn", "ambiguous", "hard-to-learn"} <= {text.get_text() for text in axes.texts}

    values = torch.arange(1000, dtype=torch.float64) / 1000
    figures = [data_map_figure(values, values, values, "big", max_points=100) for _ in range(2)]
    offsets = [figure.axes[0].collections[0].get_offsets() for figure in figures]
    assert offsets[0].shape == (100, 2) and np.array_equal(offsets[0], offsets[1])
    assert np.array_equal(offsets[0][:, 0], np.arange(100) * 10 / 1000)  # every 10th point
    assert data_map_figure([], [], [], "empty").axes[0].collections[0].get_offsets().shape[0] == 0


def test_reliability_diagram_figure_bars_and_ece_title():
    count = torch.tensor([0, 0, 4, 0, 6])
    confidence_sum = torch.tensor([0.0, 0.0, 1.9, 0.0, 5.4], dtype=torch.float64)
    correct_sum = torch.tensor([0.0, 0.0, 1.0, 0.0, 6.0], dtype=torch.float64)
    figure = reliability_diagram_figure(count, confidence_sum, correct_sum, "pseudo-labels")
    axes = figure.axes[0]
    accuracy_bars = axes.containers[0].patches
    assert [bar.get_height() for bar in accuracy_bars] == pytest.approx([1 / 4, 6 / 6])  # empty bins blank
    assert [bar.get_x() for bar in accuracy_bars] == pytest.approx([0.4, 0.8])
    assert len(axes.containers[1].patches) == 2  # the gaps
    ece = (abs(1.0 - 1.9) + abs(6.0 - 5.4)) / 10
    assert f"ECE = {100 * ece:.2f}%" in axes.get_title()
    empty = reliability_diagram_figure(torch.zeros(5), torch.zeros(5), torch.zeros(5), "none")
    assert "nan" in empty.axes[0].get_title() and len(empty.axes[0].containers[0].patches) == 0


def test_class_distribution_figure_normalises_both():
    names = [f"class{c}" for c in range(12)]
    estimated, true = torch.arange(1, 13, dtype=torch.float64), torch.full((12,), 5.0)
    axes = class_distribution_figure(names, estimated, true, "q_hat vs truth").axes[0]
    heights = [[bar.get_height() for bar in container.patches] for container in axes.containers]
    assert len(heights) == 2 and all(len(h) == 12 for h in heights)
    assert heights[0] == pytest.approx((estimated / estimated.sum()).tolist())
    assert heights[1] == pytest.approx([1 / 12] * 12)
    assert axes.get_xticklabels()[0].get_rotation() == 90  # more than 10 classes
    assert [text.get_text() for text in axes.get_legend().get_texts()] == ["q_hat", "true"]
    only_estimate = class_distribution_figure(names[:3], [1, 1, 2], None, "q_hat").axes[0]
    assert len(only_estimate.containers) == 1 and only_estimate.get_xticklabels()[0].get_rotation() == 0


def test_confusion_matrix_figure_is_row_normalised():
    confusion = torch.tensor([[3, 1, 0], [0, 0, 0], [1, 1, 2]])
    figure = confusion_matrix_figure(confusion, ["a", "b", "c"], "confusion")
    axes = figure.axes[0]
    assert len(figure.axes) == 2  # heat map and colour bar
    shown = np.ma.filled(axes.images[0].get_array(), np.nan)
    assert_close(shown, [[0.75, 0.25, 0.0], [nan, nan, nan], [0.25, 0.25, 0.5]])
    assert len(axes.texts) == 6  # the never-true row has no text
    big = confusion_matrix_figure(torch.eye(25, dtype=torch.int64), [str(c) for c in range(25)], "big")
    assert len(big.axes[0].texts) == 0


def test_save_figure_writes_png_atomically(tmp_path):
    path = tmp_path / "figures" / "nested" / "map.png"
    save_figure(data_map_figure([0.5, 0.9], [0.1, 0.3], [1.0, 0.0], "two points"), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["map.png"]  # no temporary file left behind
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as readable as any file the user writes


def test_save_figure_failure_leaves_old_file_and_no_temporary(tmp_path):
    class BrokenFigure:
        def savefig(self, file, **kwargs):
            file.write(b"\x89PNG half")
            raise OSError("disk full")

    path = tmp_path / "map.png"
    path.write_bytes(b"old")
    with pytest.raises(OSError, match="disk full"):
        save_figure(BrokenFigure(), path)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["map.png"]


def test_write_text_failure_leaves_old_file_and_no_temporary(tmp_path):
    from debiaspl.files import write_text
    path = tmp_path / "notes.txt"
    path.write_text("old")
    with pytest.raises(UnicodeEncodeError):
        write_text(path, "half \ud800")  # the temporary is opened and partly written before this fails
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_a_logged_figure_is_the_png_file_byte_for_byte_in_tensorboard(tmp_path):
    import io
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from debiaspl.engine.run_log import RunLog
    log = RunLog(tmp_path, resume_step=0)
    log.figure("maps/data_map", data_map_figure([0.5, 0.9], [0.1, 0.3], [1.0, 0.0], "two points"), 7,
               tmp_path / "figures" / "data_map.png")
    log.close()
    (image,) = EventAccumulator(str(tmp_path), size_guidance={"images": 0}).Reload().Images("maps/data_map")
    png = (tmp_path / "figures" / "data_map.png").read_bytes()
    assert image.step == 7 and image.encoded_image_string == png
    assert (image.width, image.height) == Image.open(io.BytesIO(png)).size


def test_figures_leave_no_pyplot_figure_open(tmp_path):
    import matplotlib.pyplot as plt
    before = plt.get_fignums()
    save_figure(data_map_figure([0.5], [0.1], [1.0], "map"), tmp_path / "map.png")
    reliability_diagram_figure(torch.ones(3), torch.ones(3) / 2, torch.ones(3), "reliability")
    class_distribution_figure(["a", "b"], [1, 2], [2, 1], "classes")
    confusion_matrix_figure(torch.eye(2), ["a", "b"], "confusion")
    assert before == [] and plt.get_fignums() == []


def test_top_k_in_region_keeps_to_the_data_maps_region():
    # sample 0 has the lowest confidence but a high variability: the map calls it ambiguous
    metrics = {"confidence": torch.tensor([0.05, 0.3, 0.9, 0.2]), "variability": torch.tensor([0.3, 0.1, 0.05, 0.15])}
    assert top_k("hard-to-learn", metrics, 3).tolist() == [0, 3, 1]
    assert top_k("hard-to-learn", metrics, 3, in_region=True).tolist() == [3, 1]
    assert top_k("ambiguous", metrics, 3, in_region=True).tolist() == [0]
    assert top_k("easy-to-learn", metrics, 3, in_region=True).tolist() == [2]
