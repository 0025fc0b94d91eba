"""FlexMatch's class-wise thresholds against a hand-written reference of the authors' rule, and
FlexMatch (+ DebiasPL) as an algorithm of the registry: composition, tau = 0, resume."""

from collections import Counter

import pytest
import torch

from conftest import assert_same_step_output
from debiaspl.algorithm import StepInputs, compose_algorithm
from debiaspl.algorithm.debiaspl import DebiasPLOptions
from debiaspl.algorithm.flexmatch import FlexMatchOptions, class_thresholds, learning_effects, record_selected_labels
from debiaspl.engine.run import run_folder, train_run
from debiaspl.run_folder import load_checkpoint


def test_learning_effects_and_thresholds_by_hand():
    # 10 unlabeled samples, 4 classes: class 0 three times, 1 twice, 2 once, 3 never, 4 never selected
    selected = torch.tensor([0, 0, 0, 1, 1, 2, -1, -1, -1, -1])
    # warm-up: normalised by max(3, 4 unused) = 4; without: by the largest class count, 3
    assert torch.equal(learning_effects(selected, 4, warmup=True), torch.tensor([0.75, 0.5, 0.25, 0.0]))
    assert torch.allclose(learning_effects(selected, 4, warmup=False), torch.tensor([1.0, 2 / 3, 1 / 3, 0.0]))
    # tau * x / (2 - x)
    expected = torch.tensor([0.95 * 0.75 / 1.25, 0.95 * 0.5 / 1.5, 0.95 * 0.25 / 1.75, 0.0])
    assert torch.allclose(class_thresholds(selected, 4, 0.95, warmup=True), expected)
    # nothing selected yet: every threshold is 0, so every sample passes (the authors' first steps)
    assert torch.equal(class_thresholds(torch.full((5,), -1), 3, 0.95, warmup=True), torch.zeros(3))


def test_duplicates_keep_their_last_confident_label():
    selected = torch.full((4,), -1)
    idx = torch.tensor([2, 0, 2, 2, 1])
    labels = torch.tensor([5, 6, 7, 8, 9])
    confident = torch.tensor([True, False, True, False, True])
    # sample 2: confident at positions 0 and 2 -> label 7 (position 3 is not confident); 0 stays -1
    assert record_selected_labels(selected, idx, labels, confident).tolist() == [-1, 9, 7, -1]


class ReferenceFlexMatch:
    """The authors' masking hook, written out with a Counter and Python loops (USB's FlexMatchThresholdingHook)."""

    def __init__(self, num_unlabeled, num_classes, threshold, warmup):
        self.selected = [-1] * num_unlabeled
        self.acc = [0.0] * num_classes
        self.threshold, self.warmup, self.num_classes = threshold, warmup, num_classes

    def masking(self, probs, idx):
        """probs [N, C] float32; the comparisons in float32, as the authors' tensors are."""
        mask = []
        for row in probs:
            confidence, label = row.max(dim=0)
            beta = torch.tensor(self.acc[int(label)], dtype=torch.float32)
            mask.append(float(confidence >= self.threshold * (beta / (2.0 - beta))))
        for row, sample in zip(probs, idx.tolist()):
            confidence, label = row.max(dim=0)
            if confidence >= self.threshold:
                self.selected[sample] = int(label)
        counter = Counter(self.selected)
        if max(counter.values()) < len(self.selected):
            denominator = max(counter.values()) if self.warmup else max(v for k, v in counter.items() if k != -1)
            self.acc = [counter[c] / denominator for c in range(self.num_classes)]
        return mask


@pytest.mark.parametrize("warmup", [True, False])
def test_flexmatch_step_follows_the_reference_over_a_trajectory(warmup):
    num_unlabeled, num_classes, batch = 40, 5, 16
    algorithm = compose_algorithm("flexmatch", FlexMatchOptions(threshold=0.7, warmup=warmup))
    reference = ReferenceFlexMatch(num_unlabeled, num_classes, 0.7, warmup)
    state = algorithm.initial_state(num_classes, num_unlabeled)
    generator = torch.Generator().manual_seed(0)
    masks = []
    for step in range(30):
        # sharper predictions as "training" goes on, so thresholds rise and some samples fail them
        logits_weak = torch.randn(batch, num_classes, generator=generator) * (0.5 + step / 5)
        idx = torch.randint(0, num_unlabeled, (batch,), generator=generator)
        out = algorithm.step(StepInputs(torch.randn(4, num_classes), torch.arange(4), logits_weak,
                                        torch.randn(batch, num_classes), idx), state)
        expected_mask = reference.masking(torch.softmax(logits_weak, dim=1), idx)
        assert out.mask.tolist() == expected_mask, step
        assert out.state["selected_label"].tolist() == reference.selected, step
        assert torch.equal(out.pseudo_labels, logits_weak.argmax(dim=1))
        state = out.state
        masks.append(out.mask)
    rates = torch.stack(masks).mean(dim=1)
    assert rates[0] == 1 and 0 < rates[-10:].mean() < 1  # all pass at first; later the thresholds bite


def _views(seed, n=12, c=5):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(4, c, generator=g).requires_grad_(), torch.tensor([0, 1, 2, 3]),
            torch.randn(n, c, generator=g) * 3, torch.randn(n, c, generator=g).requires_grad_(),
            torch.randint(0, 30, (n,), generator=g))


def test_flexmatch_with_debiaspl_at_tau_zero_equals_flexmatch_bit_for_bit():
    z_lb, y, z_w, z_s, idx = _views(0)
    options = FlexMatchOptions(threshold=0.6)
    plain = compose_algorithm("flexmatch", options, marginal_momentum=0.9)
    layered = compose_algorithm("flexmatch+debiaspl", options, DebiasPLOptions(tau=0.0), marginal_momentum=0.9)
    state = plain.initial_state(5, 30)
    state["selected_label"][:10] = torch.arange(10) % 5  # some learning effects already
    state["class_marginal"] = torch.tensor([0.5, 0.2, 0.1, 0.1, 0.1])
    a = plain.step(StepInputs(z_lb, y, z_w, z_s, idx), state)
    b = layered.step(StepInputs(z_lb, y, z_w, z_s, idx), state)
    assert_same_step_output(a, b)
    for grad_a, grad_b in zip(torch.autograd.grad(a.loss, [z_lb, z_s]), torch.autograd.grad(b.loss, [z_lb, z_s])):
        assert torch.equal(grad_a, grad_b)
    c = compose_algorithm("flexmatch+debiaspl", options, DebiasPLOptions(tau=1.0)).step(StepInputs(z_lb, y, z_w, z_s, idx),
                                                                                       state)
    assert not torch.equal(a.loss, c.loss)
    assert torch.equal(state["selected_label"][:10], torch.arange(10) % 5)  # the input state is not mutated


def test_flexmatch_learns_from_the_debiased_labels():
    # Head class 0 wins on raw logits; with q_hat heavily on class 0 the debiased label is class 1,
    # and that is what FlexMatch's per-sample state records.
    algorithm = compose_algorithm("flexmatch+debiaspl", FlexMatchOptions(threshold=0.5), DebiasPLOptions(tau=1.0))
    state = {**algorithm.initial_state(3, 4), "class_marginal": torch.tensor([0.9, 0.05, 0.05])}
    logits_weak = torch.tensor([[3.0, 2.5, -5.0]])
    out = algorithm.step(StepInputs(torch.zeros(1, 3), torch.tensor([0]), logits_weak, torch.zeros(1, 3),
                                    torch.tensor([2])), state)
    assert out.pseudo_labels.tolist() == [1] and out.state["selected_label"].tolist() == [-1, -1, 1, -1]
    assert algorithm.pseudo_labels(logits_weak, out.state).labels.tolist() == [1]
    assert compose_algorithm("flexmatch").pseudo_labels(logits_weak, out.state).labels.tolist() == [0]


def _final_state(config):
    return load_checkpoint(run_folder(config) / "checkpoint.pt")


def test_flexmatch_runs_resume_exactly_and_tau_zero_equals_flexmatch(tiny):
    sections = {"algorithm": {"name": "flexmatch+debiaspl", "flexmatch": {"threshold": 0.3}}, "train": {"steps": 8}}
    straight = tiny(logging={"run_name": "straight"}, **sections)
    paused = tiny(logging={"run_name": "paused"}, **sections)
    train_run(straight)
    train_run(paused, until_step=3)
    train_run(paused)
    a, b = _final_state(straight), _final_state(paused)
    for key in ("model", "ema", "optimizer"):
        assert all(torch.equal(value, b[key][name]) for name, value in a[key].items()
                   if isinstance(value, torch.Tensor)), key
    assert a["algorithm"].keys() == {"class_marginal", "selected_label"}
    assert all(torch.equal(a["algorithm"][key], b["algorithm"][key]) for key in a["algorithm"])
    selected = a["algorithm"]["selected_label"]
    assert (selected >= 0).any() and (selected == -1).any()  # the state moved, and not to all-selected

    plain = tiny(logging={"run_name": "plain"}, algorithm={"name": "flexmatch", "flexmatch": {"threshold": 0.3}},
                 train={"steps": 8})
    zero = tiny(logging={"run_name": "zero"}, algorithm={"name": "flexmatch+debiaspl", "debiaspl": {"tau": 0.0},
                                                         "flexmatch": {"threshold": 0.3}}, train={"steps": 8})
    train_run(plain)
    train_run(zero)
    c, d = _final_state(plain), _final_state(zero)
    assert all(torch.equal(value, d["model"][name]) for name, value in c["model"].items())
    assert all(torch.equal(c["algorithm"][key], d["algorithm"][key]) for key in c["algorithm"])
    assert not torch.equal(c["model"]["classifier.weight"], a["model"]["classifier.weight"])  # tau 0.4 differs


def test_flexmatch_thresholds_are_plotted_per_class(tiny):
    import json
    config = tiny(algorithm={"name": "flexmatch"}, train={"steps": 4}, logging={"run_name": "plotted"})
    train_run(config)
    rows = [json.loads(line) for line in (run_folder(config) / "metrics.jsonl").read_text().splitlines()]
    logged = [row for row in rows if "pseudo/flexmatch_threshold/0" in row]
    assert len(logged) == 2 and "pseudo/class_marginal/9" in logged[-1]
    assert all(0 <= row[f"pseudo/flexmatch_threshold/{c}"] <= 0.5 for row in logged for c in range(10))
    selected = load_checkpoint(run_folder(config) / "checkpoint.pt")["algorithm"]["selected_label"]
    expected = class_thresholds(selected, 10, 0.5, warmup=True)
    assert [logged[-1][f"pseudo/flexmatch_threshold/{c}"] for c in range(10)] == pytest.approx(expected.tolist())
