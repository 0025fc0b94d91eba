"""Test metrics and MC Dropout, OOD detection, active-learning selection and last-layer TracIn self-influence."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from debiaspl.metrics.influence import last_layer_self_influence, precision_recall_at_k
from debiaspl.metrics.ood import detection_metrics, fpr_at_tpr, ood_scores, score_histogram_figure
from debiaspl.metrics.predictive import (MCDropoutAccumulator, brier_score, negative_log_likelihood,
                                          predictive_scores)
from debiaspl.metrics.selection import (STRATEGIES, acquisition_scores, class_quotas, inverse_marginal_weights,
                                         select_class_balanced, select_top_k)

LOG2 = math.log(2.0)


def assert_close(actual, expected, tolerance=1e-9):
    """Element-wise equality up to `tolerance` with nan == nan."""
    np.testing.assert_allclose(np.asarray(actual, dtype=float), np.asarray(expected, dtype=float), rtol=tolerance,
                               atol=tolerance, equal_nan=True)


# predictive ------------------------------------------------------------------------------------------------

def test_negative_log_likelihood_and_brier_by_hand():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0], [0.0, 200.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 0])
    # p_y = 1/2, 3/4, and e^-200 / (1 + e^-200): -log p_y = 200 + log(1 + e^-200), finite.
    expected = (LOG2 + math.log(4 / 3) + 200.0 + math.log1p(math.exp(-200.0))) / 3
    assert negative_log_likelihood(logits, labels) == pytest.approx(expected, rel=1e-12)
    assert math.isnan(negative_log_likelihood(logits[:0], labels[:0]))

    probs = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.7, 0.1], [0.0, 0.0, 1.0]], dtype=torch.float64)
    # (0.25 + 0.25) + (0.04 + 0.09 + 0.01) + 0
    assert brier_score(probs, torch.tensor([0, 1, 2])) == pytest.approx((0.5 + 0.14 + 0.0) / 3, rel=1e-12)
    assert brier_score(probs[2:], torch.tensor([0])) == pytest.approx(2.0)  # confidently wrong: the maximum
    assert math.isnan(brier_score(probs[:0], torch.tensor([], dtype=torch.long)))


def test_identical_passes_have_no_mutual_information():
    generator = torch.Generator().manual_seed(0)
    probs = torch.randn(6, 4, generator=generator).softmax(dim=1)
    scores = predictive_scores(probs.expand(5, 6, 4))
    assert_close(scores["mutual_information"], np.zeros(6), 1e-6)
    assert_close(scores["predictive_entropy"], scores["expected_entropy"], 1e-9)
    assert_close(scores["variance"], np.zeros(6), 1e-12)
    assert (scores["predictive_entropy"] > 0.1).all()  # the passes are uncertain, they just agree


def test_disagreeing_one_hot_passes_have_mutual_information_log_2():
    stacked = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # T = 2 passes, N = 1, C = 2
    scores = predictive_scores(stacked)
    assert_close(scores["mean_probs"], [[0.5, 0.5]])
    assert_close(scores["predictive_entropy"], [LOG2])
    assert_close(scores["expected_entropy"], [0.0])
    assert_close(scores["mutual_information"], [LOG2])
    assert_close(scores["mutual_information_normalized"], [1.0])
    assert_close(scores["predictive_entropy_normalized"], [1.0])


def test_variance_by_hand():
    # Class 0 over the passes: 0.2, 0.6 -> mean 0.4, population variance 0.04; class 1 likewise; class 2: 0.
    stacked = torch.tensor([[[0.2, 0.6, 0.2]], [[0.6, 0.2, 0.2]]], dtype=torch.float64)
    scores = predictive_scores(stacked)
    assert_close(scores["variance"], [(0.04 + 0.04 + 0.0) / 3])
    accumulator = MCDropoutAccumulator(1, 3)
    accumulator.add(0, stacked[0])
    accumulator.add(0, stacked[1])
    assert_close(accumulator.result()["variance"], [(0.04 + 0.04 + 0.0) / 3])


def test_accumulator_in_shuffled_order_equals_predictive_scores():
    generator = torch.Generator().manual_seed(1)
    passes, num_samples, num_classes, batch = 7, 23, 5, 4
    stacked = (3 * torch.randn(passes, num_samples, num_classes, generator=generator)).softmax(dim=2)
    chunks = [(t, start) for t in range(passes) for start in range(0, num_samples, batch)]
    accumulator = MCDropoutAccumulator(num_samples, num_classes)
    for position in torch.randperm(len(chunks), generator=generator).tolist():
        t, start = chunks[position]
        accumulator.add(start, stacked[t, start:start + batch])
    streamed, reference = accumulator.result(), predictive_scores(stacked)
    assert set(streamed) == set(reference) | {"num_passes"}
    assert torch.equal(streamed["num_passes"], torch.full((num_samples,), passes))
    for name, values in reference.items():
        assert_close(streamed[name], values, 1e-9)
    assert (reference["mutual_information"] > 1e-3).all()  # the passes disagree: a non-trivial comparison
    with pytest.raises(ValueError, match="outside"):
        accumulator.add(num_samples - 1, stacked[0, :2])


def test_accumulator_counts_passes_per_sample():
    # Sample 0 gets two passes, sample 1 one, sample 2 none (nan).
    first = torch.tensor([[0.3, 0.7], [0.3, 0.7]], dtype=torch.float64)
    second = torch.tensor([[0.9, 0.1]], dtype=torch.float64)
    accumulator = MCDropoutAccumulator(3, 2)
    accumulator.add(0, first)
    accumulator.add(0, second)
    result = accumulator.result()
    assert result["num_passes"].tolist() == [2, 1, 0]
    assert_close(result["mean_probs"], [[0.6, 0.4], [0.3, 0.7], [math.nan, math.nan]])
    reference = predictive_scores(torch.stack([first[:1], second]))
    for name in ("predictive_entropy", "expected_entropy", "mutual_information", "variance"):
        assert_close(result[name][:1], reference[name])
    assert_close(result["predictive_entropy"][1:], [-(0.3 * math.log(0.3) + 0.7 * math.log(0.7)), math.nan])


# OOD -------------------------------------------------------------------------------------------------------

def test_ood_scores_of_hand_chosen_logits():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    scores = ood_scores(logits, mutual_information=torch.tensor([0.1, 0.2]))
    assert_close(scores["max_logit"], [-2.0, 0.0], 1e-6)
    assert_close(scores["energy"], [-math.log(math.exp(2) + 2), -math.log(3)], 1e-6)
    assert_close(scores["msp"], [-math.exp(2) / (math.exp(2) + 2), -1 / 3], 1e-6)
    assert scores["entropy"][1] == pytest.approx(1.0, abs=1e-6) and scores["entropy"][0] < 1.0
    assert_close(scores["mutual_information"], [0.1, 0.2], 1e-6)
    # The uniform row (more OOD-like) scores higher on every score.
    assert all(values[1] > values[0] for values in scores.values())
    assert "mutual_information" not in ood_scores(logits)


def test_detection_metrics_separable_and_inverted():
    scores_in, scores_out = torch.tensor([0.0, 1.0, 2.0, 3.0]), torch.tensor([5.0, 6.0, 7.0])
    metrics = detection_metrics(scores_in, scores_out)
    assert metrics == {"auroc": 1.0, "aupr_out": 1.0, "aupr_in": 1.0, "fpr_at_95_tpr": 0.0}
    inverted = detection_metrics(scores_out, scores_in)
    assert inverted["auroc"] == 0.0 and inverted["fpr_at_95_tpr"] == 1.0
    assert all(math.isnan(value) for value in detection_metrics(torch.zeros(0), scores_out).values())
    with pytest.raises(ValueError, match="scores_out contains nan"):
        detection_metrics(scores_in, torch.tensor([1.0, math.nan]))


def test_fpr_at_95_tpr_by_hand():
    # 20 OOD scores 1..20: 95% is 19 of them, so t = 2 (the 19th largest). ID scores >= 2: 2, 2, 5 -> 3 of 5.
    scores_out = np.arange(1, 21, dtype=float)
    scores_in = np.array([0.0, 1.0, 2.0, 2.0, 5.0])
    assert fpr_at_tpr(scores_in, scores_out) == pytest.approx(3 / 5)
    # 10 OOD scores: ceil(9.5) = 10 must be caught, so t = the smallest OOD score, 1; ID >= 1: 4 of 5.
    assert fpr_at_tpr(scores_in, np.arange(1, 11, dtype=float)) == pytest.approx(4 / 5)
    metrics = detection_metrics(torch.from_numpy(scores_in), torch.from_numpy(scores_out))
    assert metrics["fpr_at_95_tpr"] == pytest.approx(3 / 5)
    # AUROC by hand: each ID score's share of OOD scores above it (+ half the ties), averaged.
    expected_auroc = np.mean([(np.sum(scores_out > s) + 0.5 * np.sum(scores_out == s)) / 20 for s in scores_in])
    assert metrics["auroc"] == pytest.approx(expected_auroc)


def test_score_histogram_figure_one_axes_per_score_no_pyplot(tmp_path):
    import matplotlib.pyplot as plt
    before = plt.get_fignums()
    generator = torch.Generator().manual_seed(2)
    scores_in = ood_scores(torch.randn(50, 4, generator=generator) * 3)
    scores_out = ood_scores(torch.randn(30, 4, generator=generator))
    figure = score_histogram_figure(scores_in, scores_out, "test")
    assert len(figure.axes) == len(scores_in) == 4
    assert all("AUROC" in axes.get_title() for axes in figure.axes)
    assert plt.get_fignums() == before
    with pytest.raises(ValueError, match="score names differ"):
        score_histogram_figure(scores_in, {"msp": scores_out["msp"]}, "test")


# selection -------------------------------------------------------------------------------------------------

PROBS = torch.tensor([[0.9, 0.05, 0.05],    # confident
                      [1 / 3, 1 / 3, 1 / 3],  # uniform: most uncertain
                      [0.5, 0.45, 0.05],    # closest top-2 pair
                      [0.6, 0.2, 0.2]])


def test_uncertainty_strategies_order_hand_chosen_probs():
    least_confidence = acquisition_scores("least_confidence", probs=PROBS)
    assert_close(least_confidence, [0.1, 2 / 3, 0.5, 0.4], 1e-6)
    assert select_top_k(least_confidence, 4).tolist() == [1, 2, 3, 0]
    margin = acquisition_scores("margin", probs=PROBS)
    assert_close(margin, [-0.85, 0.0, -0.05, -0.4], 1e-6)
    assert select_top_k(margin, 4).tolist() == [1, 2, 3, 0]
    entropy = acquisition_scores("entropy", probs=PROBS)
    assert select_top_k(entropy, 1).tolist() == [1] and entropy[1] == pytest.approx(1.0, abs=1e-6)
    assert select_top_k(entropy, 4)[-1] == 0
    # Margin puts the closest pair ahead of a flatter row whose top two are farther apart.
    probs = torch.tensor([[0.4, 0.3, 0.3], [0.5, 0.48, 0.02]])
    assert select_top_k(acquisition_scores("margin", probs=probs), 1).tolist() == [1]
    assert select_top_k(acquisition_scores("entropy", probs=probs), 1).tolist() == [0]


def test_given_score_strategies_and_missing_inputs():
    values = torch.tensor([0.3, 0.9, 0.1])
    for strategy, name in (("bald", "mutual_information"), ("ambiguity", "variability"),
                           ("self_influence", "self_influence")):
        scores = acquisition_scores(strategy, **{name: values})
        assert torch.equal(scores, values) and scores.data_ptr() != values.data_ptr()
        with pytest.raises(ValueError, match=name):
            acquisition_scores(strategy, probs=PROBS)
    for strategy in ("least_confidence", "margin", "entropy"):
        with pytest.raises(ValueError, match="probs"):
            acquisition_scores(strategy, mutual_information=values)
    with pytest.raises(ValueError, match="generator"):
        acquisition_scores("random", probs=PROBS)
    with pytest.raises(ValueError, match="num_samples"):
        acquisition_scores("random", generator=torch.Generator())
    with pytest.raises(ValueError, match="least_confidence, margin, entropy, bald, random, ambiguity"):
        acquisition_scores("coreset", probs=PROBS)
    assert len(STRATEGIES) == 7


def test_random_strategy_is_reproducible_per_generator():
    def draw(seed, **inputs):
        return acquisition_scores("random", generator=torch.Generator().manual_seed(seed), **inputs)
    global_state = torch.get_rng_state()
    first = draw(7, num_samples=100)
    assert torch.equal(torch.get_rng_state(), global_state)  # the global RNG is untouched
    assert torch.equal(first, draw(7, num_samples=100))
    assert not torch.equal(first, draw(8, num_samples=100))
    assert draw(7, probs=PROBS).shape == (4,)
    assert ((first >= 0) & (first < 1)).all()


def test_select_top_k_ties_and_nan():
    scores = torch.tensor([1.0, math.nan, 3.0, 1.0, 3.0, math.inf])
    assert select_top_k(scores, 5).tolist() == [5, 2, 4, 0, 3]
    assert select_top_k(scores, 0).tolist() == []
    with pytest.raises(ValueError, match="not nan"):
        select_top_k(scores, 6)


def test_class_quotas_by_hand():
    weights = torch.tensor([0.5, 0.25, 0.25])
    assert class_quotas(torch.tensor([10, 10, 10]), weights, 4).tolist() == [2, 1, 1]
    # Shares 2.5, 1.25, 1.25 of 5: floors 2, 1, 1, the extra seat to the largest remainder (class 0).
    assert class_quotas(torch.tensor([10, 10, 10]), weights, 5).tolist() == [3, 1, 1]
    # Equal remainders: the lower class index wins.
    assert class_quotas(torch.tensor([10, 10, 10]), torch.tensor([1.0, 1.0, 1.0]), 4).tolist() == [2, 1, 1]
    # Class 0 has 1 sample: its other seat is split again over classes 1 and 2 (1:1, tie to class 1).
    assert class_quotas(torch.tensor([1, 10, 10]), weights, 4).tolist() == [1, 2, 1]
    # A weight-0 class gets samples only once the others are exhausted.
    assert class_quotas(torch.tensor([2, 5]), torch.tensor([1.0, 0.0]), 3).tolist() == [2, 1]
    with pytest.raises(ValueError, match="cannot select 4"):
        class_quotas(torch.tensor([1, 1, 1]), weights, 4)


def test_select_class_balanced_by_hand():
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, math.nan])
    predicted = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    # Plain top-4 would take only class 0; quotas [2, 1, 1] take 0, 1 from class 0, 4 from 1, 6 from 2.
    chosen = select_class_balanced(scores, predicted, torch.tensor([0.5, 0.25, 0.25]), 4)
    assert chosen.tolist() == [0, 1, 4, 6]
    # Class 2 has one scored sample (7 is nan): tail-heavy weights give quotas [1, 2, 1] after it is capped.
    chosen = select_class_balanced(scores, predicted, torch.tensor([0.1, 0.3, 0.6]), 4)
    assert chosen.tolist() == [0, 4, 5, 6]
    # With 1 / q_hat the rare predicted class is favoured.
    weights = inverse_marginal_weights(torch.tensor([0.7, 0.2, 0.1]))
    assert select_class_balanced(scores, predicted, weights, 1).tolist() == [6]
    # The result is in score order, not class order: class 1's 0.9 comes before class 0's 0.5.
    chosen = select_class_balanced(torch.tensor([0.1, 0.9, 0.5, 0.7]), torch.tensor([0, 1, 0, 1]),
                                   torch.tensor([1.0, 1.0]), 2)
    assert chosen.tolist() == [1, 2]


def test_inverse_marginal_weights():
    weights = inverse_marginal_weights(torch.tensor([0.5, 0.25, 0.25]))
    assert_close(weights, [0.2, 0.4, 0.4])
    floored = inverse_marginal_weights(torch.tensor([1.0, 0.0]))  # 1 / 1e-12 dwarfs 1 / 1
    assert_close(floored, [1e-12 / (1 + 1e-12), 1 / (1 + 1e-12)])
    assert torch.isfinite(floored).all()


# influence -------------------------------------------------------------------------------------------------

def test_last_layer_self_influence_equals_autograd():
    generator = torch.Generator().manual_seed(3)
    num_samples, dim, num_classes, learning_rate = 6, 5, 4, 0.03
    layer = torch.nn.Linear(dim, num_classes).double()
    with torch.no_grad():
        layer.weight.copy_(torch.randn(num_classes, dim, generator=generator, dtype=torch.float64))
        layer.bias.copy_(torch.randn(num_classes, generator=generator, dtype=torch.float64))
    features = torch.randn(num_samples, dim, generator=generator, dtype=torch.float64)
    labels = torch.randint(num_classes, (num_samples,), generator=generator)
    expected = []
    for h, y in zip(features, labels):
        loss = F.cross_entropy(layer(h[None]), y[None])
        grad_weight, grad_bias = torch.autograd.grad(loss, (layer.weight, layer.bias))
        expected.append(learning_rate * (grad_weight.square().sum() + grad_bias.square().sum()).item())
    with torch.no_grad():
        probs = layer(features).softmax(dim=1)
    influence = last_layer_self_influence(probs, labels, features, learning_rate)
    assert influence.dtype == torch.float64
    assert_close(influence, expected, 1e-10)


def test_planted_mislabel_has_top_self_influence():
    generator = torch.Generator().manual_seed(4)
    centres = torch.tensor([[-3.0, 0.0], [3.0, 0.0]])
    labels = torch.arange(2).repeat_interleave(20)
    features = centres[labels] + 0.5 * torch.randn(40, 2, generator=generator)
    # A linear classifier fit to the clean labels in closed form: nearest class mean, whose logits
    # 2 (mu_c . h - ||mu_c||^2 / 2) are W h + b with W = 2 mu, b = -||mu_c||^2 (no training loop to wait on).
    means = torch.stack([features[labels == c].mean(dim=0) for c in range(2)])
    probs = (features @ (2 * means).T - means.square().sum(dim=1)).softmax(dim=1)
    noisy = labels.clone()
    noisy[13] = 1 - noisy[13]
    assert (probs.argmax(dim=1) == labels).all()
    influence = last_layer_self_influence(probs, noisy, features, 0.1)
    assert select_top_k(influence, 1).tolist() == [13]
    assert precision_recall_at_k(influence, noisy != labels, 1) == (1.0, 1.0)


def test_precision_recall_at_k_by_hand():
    scores = torch.tensor([0.9, 0.1, 0.5, 0.5, math.nan, 0.7])
    is_positive = torch.tensor([True, False, False, True, True, False])
    # Ranking: 0 (0.9), 5 (0.7), 2 (0.5, lower index of the tie), 3 (0.5), 1 (0.1), 4 (nan).
    assert precision_recall_at_k(scores, is_positive, 1) == (1.0, 1 / 3)
    assert precision_recall_at_k(scores, is_positive, 3) == (1 / 3, 1 / 3)
    assert precision_recall_at_k(scores, is_positive, 4) == (2 / 4, 2 / 3)
    assert precision_recall_at_k(scores, is_positive, 6) == (3 / 6, 3 / 3)
    precision, recall = precision_recall_at_k(scores, torch.zeros(6, dtype=torch.bool), 2)
    assert precision == 0.0 and math.isnan(recall)
    with pytest.raises(ValueError, match="k must lie"):
        precision_recall_at_k(scores, is_positive, 0)


def test_accuracy_by_uncertainty_and_the_rejection_curve_by_hand():
    from debiaspl.metrics.uncertainty import accuracy_by_uncertainty, rejection_curve

    uncertainty = torch.tensor([0.1, 0.9, 0.4, 0.7, 0.2])
    correct = torch.tensor([True, False, True, False, False])
    assert accuracy_by_uncertainty(uncertainty, correct, 0.5) == {"low": {"count": 3, "accuracy": 2 / 3},
                                                                   "high": {"count": 2, "accuracy": 0.0}}
    fractions, accuracies = rejection_curve(uncertainty, correct, points=6)
    assert fractions == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    # keep 5, 4, 3, 2, 1, 0 of the most certain: 0.1 T, 0.2 F, 0.4 T, 0.7 F, 0.9 F
    assert accuracies[:5] == [2 / 5, 2 / 4, 2 / 3, 1 / 2, 1.0] and math.isnan(accuracies[5])
