import json
import math
from pathlib import Path

import pytest
import torch

from debiaspl.config import ConfigError, from_dict, load_experiment
from debiaspl.run_folder import load_checkpoint
from debiaspl.engine.run import run_folder, train_run
from debiaspl.hooks import CartographyHook, DriftHook, RunContext, StepRecord, UncertaintyHook

ALL_HOOKS = [{"name": "drift", "interval": 2, "figure_interval": 4},
             {"name": "cartography", "figure_interval": 4, "export_allenai": True},
             {"name": "uncertainty", "interval": 2, "figure_interval": 4}]


class RecordingLog:
    """A HookLog that keeps what hooks write."""

    def __init__(self):
        self.scalar_values, self.histograms, self.figures, self.layouts, self.pngs = {}, {}, {}, [], []

    def scalars(self, step, values):
        for tag, value in values.items():
            self.scalar_values.setdefault(tag, []).append((step, value))

    def histogram(self, tag, counts, edges, step):
        self.histograms.setdefault(tag, []).append((step, counts, edges))

    def figure(self, tag, figure, step, png_path=None):
        self.figures.setdefault(tag, []).append(step)
        self.pngs.append(png_path)

    def text(self, tag, text, step=0):
        pass

    def custom_scalars(self, layout):
        self.layouts.append(layout)


def context(tmp_path, num_classes=3, labeled=4, unlabeled=6, batch=2, unlabeled_batch=3, steps=4, tau=0.4,
            unlabeled_labels=None, start_step=0):
    log = RecordingLog()
    ulb_labels = torch.tensor(unlabeled_labels if unlabeled_labels is not None else [i % num_classes for i in range(unlabeled)])
    return RunContext(
        run_dir=tmp_path, log=log, class_names=[f"c{i}" for i in range(num_classes)],
        labeled_ids=[f"lb{i}" for i in range(labeled)], unlabeled_ids=[f"ulb{i}" for i in range(unlabeled)],
        labeled_labels=torch.tensor([i % num_classes for i in range(labeled)]), unlabeled_labels=ulb_labels,
        labeled_counts=[2, 1, 1][:num_classes], unlabeled_counts=torch.bincount(ulb_labels, minlength=num_classes).tolist(),
        batch_size=batch, unlabeled_batch_size=unlabeled_batch, total_steps=steps, start_step=start_step,
        algorithm="debiaspl" if tau else "fixmatch", tau=tau, threshold=0.5, device=torch.device("cpu"))


def record(step, idx_lb, y_lb, logits_lb, idx_ulb, y_ulb, probs_weak, probs_pseudo, threshold=0.5, num_classes=3):
    probs_pseudo = torch.as_tensor(probs_pseudo, dtype=torch.float32)
    confidence, labels = probs_pseudo.max(1)
    marginal = torch.full((num_classes,), 1 / num_classes)
    zero = torch.tensor(0.0)
    return StepRecord(
        step=step, idx_lb=torch.tensor(idx_lb), y_lb=torch.tensor(y_lb),
        logits_lb=torch.as_tensor(logits_lb, dtype=torch.float32), idx_ulb=torch.tensor(idx_ulb),
        y_ulb=torch.tensor(y_ulb), logits_weak=torch.as_tensor(probs_weak, dtype=torch.float32).log(),
        probs_weak=torch.as_tensor(probs_weak, dtype=torch.float32), probs_pseudo=probs_pseudo, pseudo_labels=labels,
        mask=(confidence >= threshold).float(), class_marginal_before=marginal, class_marginal=marginal, loss=zero,
        loss_sup=zero, loss_unsup=zero, lr=0.03)


def last(log, tag):
    return log.scalar_values[tag][-1][1]


# ---- drift: statistics on constructed inputs ---------------------------------------------------

def test_drift_statistics_by_hand(tmp_path):
    # 6 unlabeled samples, truth [0, 0, 0, 1, 1, 2]; the pseudo-labels favour class 0.
    ctx = context(tmp_path, unlabeled=6, unlabeled_batch=6, steps=1, unlabeled_labels=[0, 0, 0, 1, 1, 2])
    hook = DriftHook(DriftHook.Options(interval=1, figure_interval=1))
    hook.on_train_start(ctx)
    raw = [[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.5, 0.1, 0.4]]
    # debiasing turns sample 3 into class 1 and sample 5 into class 2
    debiased = [[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.45, 0.4, 0.15], [0.3, 0.6, 0.1], [0.2, 0.7, 0.1],
                [0.3, 0.1, 0.6]]
    # pseudo-labels [0, 0, 0, 1, 1, 2] masked (>= 0.5): [1, 1, 0, 1, 1, 1]
    hook.on_step_end(record(1, [0, 1], [0, 1], torch.zeros(2, 3), list(range(6)), [0, 0, 0, 1, 1, 2], raw, debiased))
    log = ctx.log
    assert last(log, "drift/kl_to_true") == pytest.approx(0.0, abs=1e-6)  # debiased labels match the truth
    assert last(log, "drift/debias_changed") == pytest.approx(2 / 6)
    assert last(log, "drift/imbalance_ratio") == pytest.approx(3.0)
    assert last(log, "drift/imbalance_ratio_masked") == pytest.approx(2.0)
    share = torch.tensor([3, 2, 1]) / 6
    uniform = torch.full((3,), 1 / 3)
    assert last(log, "drift/kl_to_uniform") == pytest.approx(float((share * (share / uniform).log()).sum()), rel=1e-4)
    assert last(log, "drift/precision/c0") == pytest.approx(1.0)
    assert last(log, "drift/recall/c1") == pytest.approx(1.0)
    assert last(log, "drift/count_ratio/c0") == pytest.approx(1.0)
    assert last(log, "drift/mask_rate/c0") == pytest.approx(2 / 3)
    assert log.histograms["drift/pseudo_labels"][-1][1] == [3, 2, 1]
    assert log.histograms["drift/pseudo_labels_before_debiasing"][-1][1] == [5, 1, 0]
    assert log.histograms["drift/pseudo_labels_masked"][-1][1] == [2, 2, 1]
    assert set(log.figures) == {"drift/class_marginal_vs_true", "drift/confusion"}
    assert tmp_path / "drift" / "confusion.png" in log.pngs


# ---- uncertainty ---------------------------------------------------------------------------------

def test_uncertainty_statistics_by_hand(tmp_path):
    ctx = context(tmp_path, unlabeled=4, unlabeled_batch=4, steps=1, tau=0.0, unlabeled_labels=[0, 1, 2, 0])
    hook = UncertaintyHook(UncertaintyHook.Options(interval=1, figure_interval=1))
    hook.on_train_start(ctx)
    probs = [[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.1, 0.1, 0.8], [0.2, 0.7, 0.1]]
    # labels [0, 0, 2, 1] vs truth [0, 1, 2, 0]: right, wrong, right, wrong
    hook.on_step_end(record(1, [0, 1], [0, 1], torch.zeros(2, 3), [0, 1, 2, 3], [0, 1, 2, 0], probs, probs))
    log = ctx.log
    entropy = [-(sum(p * math.log(p) for p in row if p > 0)) / math.log(3) for row in probs]
    assert last(log, "uncertainty/pseudo_labels/entropy_mean") == pytest.approx(sum(entropy) / 4, rel=1e-5)
    # masked (max prob >= 0.5): samples 0, 2, 3
    assert last(log, "uncertainty/pseudo_labels/entropy_masked") == pytest.approx(
        (entropy[0] + entropy[2] + entropy[3]) / 3, rel=1e-5)
    assert last(log, "uncertainty/pseudo_labels/entropy_unmasked") == pytest.approx(entropy[1], rel=1e-5)
    # wrong ones have entropies {1.0, 0.73}, right ones {0, 0.58}: entropy separates them perfectly
    assert last(log, "uncertainty/pseudo_labels/auroc_entropy_wrong") == pytest.approx(1.0)
    # confidences 1.0 (right), 1/3 (wrong), 0.8 (right), 0.7 (wrong) in 15 bins, one per bin
    ece = (abs(1 - 1.0) + abs(0 - 1 / 3) + abs(1 - 0.8) + abs(0 - 0.7)) / 4
    assert last(log, "uncertainty/pseudo_labels/ece") == pytest.approx(ece, rel=1e-5)
    assert last(log, "uncertainty/pseudo_labels/entropy_by_class/c0") == pytest.approx(
        (entropy[0] + entropy[1]) / 2, rel=1e-5)
    assert sum(log.histograms["uncertainty/pseudo_labels/entropy_all"][-1][1]) == 4
    assert "uncertainty/pseudo_labels/reliability" in log.figures


# ---- cartography: hand-computed metrics, resume -------------------------------------------------

def labeled_logits(probs_of_target_class_0):
    """Logits of 2 samples whose softmax gives probability p to class 0 and the rest split evenly."""
    rows = []
    for p in probs_of_target_class_0:
        rest = (1 - p) / 2
        rows.append([math.log(p), math.log(rest), math.log(rest)])
    return rows


def run_cartography(tmp_path, steps_before_pause=None):
    # Labeled set of 4 (all class 0 here), B = 2: steps 1-2 are epoch 0, steps 3-4 epoch 1.
    ctx = context(tmp_path, labeled=4, batch=2, unlabeled=6, unlabeled_batch=3, steps=4)
    ctx = RunContext(**{**ctx.__dict__, "labeled_labels": torch.zeros(4, dtype=torch.long)})
    hook = CartographyHook(CartographyHook.Options(figure_interval=100, export_allenai=True))
    hook.on_train_start(ctx)
    target = {0: [0.9, 0.8], 1: [0.3, 0.7], 2: [0.7, 0.2], 3: [0.5, 0.4]}  # per sample: epoch 0, epoch 1
    order = [[0, 1], [2, 3], [1, 0], [3, 2]]
    ulb = [[0.6, 0.3, 0.1]] * 3
    for step in range(1, 5):
        idx = order[step - 1]
        epoch = (step - 1) // 2
        logits = labeled_logits([target[i][epoch] for i in idx])
        hook.on_step_end(record(step, idx, [0, 0], logits, [0, 1, 2] if step % 2 else [3, 4, 5], [0, 1, 2],
                                ulb, ulb))
        if step == steps_before_pause:
            state = hook.on_save_checkpoint()
            hook = CartographyHook(CartographyHook.Options(figure_interval=100, export_allenai=True))
            hook.on_load_checkpoint(state)
            hook.on_train_start(RunContext(**{**ctx.__dict__, "start_step": step}))
    hook.on_train_end(4)
    return ctx, target


@pytest.mark.parametrize("pause", [None, 1, 3])
def test_cartography_metrics_by_hand(tmp_path, pause):
    ctx, target = run_cartography(tmp_path, pause)
    rows = {r["guid"]: r for r in map(json.loads, (tmp_path / "cartography/labeled/td_metrics.jsonl").open())}
    for i, (p0, p1) in target.items():
        row = rows[f"lb{i}"]
        assert row["confidence"] == pytest.approx((p0 + p1) / 2, abs=1e-3)
        assert row["variability"] == pytest.approx(abs(p0 - p1) / 2, abs=1e-3)  # population std of two values
        # with the rest split evenly, class 0 is the argmax iff p > (1 - p) / 2, i.e. p > 1/3
        right = [p > 1 / 3 for p in (p0, p1)]
        assert row["correctness"] == sum(right)
        expected_forgotten = 1000 if not any(right) else int(right[0] and not right[1])
        assert row["forgetfulness"] == expected_forgotten
        assert row["threshold_closeness"] == pytest.approx(row["confidence"] * (1 - row["confidence"]), abs=1e-6)
    # sample 2 (0.7 then 0.2) is the most variable: first in the ambiguous list
    ambiguous = (tmp_path / "cartography/labeled/ambiguous.csv").read_text().splitlines()
    assert ambiguous[0].startswith("rank,sample_id,label,confidence")
    assert ambiguous[1].split(",")[1] == "lb2"
    hard = (tmp_path / "cartography/labeled/hard_to_learn.csv").read_text().splitlines()
    assert hard[1].split(",")[1] == "lb3"  # lowest confidence (0.45)
    assert tmp_path / "cartography/labeled/data_map.png" in ctx.log.pngs
    # allenai export: one file per completed epoch, read back with allenai's own reading of it
    for epoch in (0, 1):
        lines = [json.loads(line) for line in
                 (tmp_path / f"cartography/labeled/training_dynamics/dynamics_epoch_{epoch}.jsonl").open()]
        assert [line["guid"] for line in lines] == ["lb0", "lb1", "lb2", "lb3"]
        for line in lines:
            probs = torch.softmax(torch.tensor(line[f"logits_epoch_{epoch}"]), 0)
            assert float(probs[line["gold"]]) == pytest.approx(target[int(line["guid"][2:])][epoch], abs=1e-5)
    # unlabeled: pseudo-label 0 every epoch for every sample; truth [0, 1, 2, 0, 1, 2]
    rows = {r["guid"]: r for r in map(json.loads, (tmp_path / "cartography/unlabeled/td_metrics.jsonl").open())}
    assert rows["ulb0"]["confidence"] == pytest.approx(0.6, abs=1e-3)
    assert rows["ulb0"]["correctness"] == 2 and rows["ulb1"]["correctness"] == 0
    assert (tmp_path / "cartography/unlabeled_before_debiasing/td_metrics.jsonl").is_file()


# ---- with the trainer ------------------------------------------------------------------------------

def test_hooks_leave_the_weights_bit_identical(tiny):
    plain = tiny(logging={"run_name": "plain"}, algorithm={"threshold": 0.0})
    watched = from_dict({**_raw(plain), "hooks": ALL_HOOKS, "logging": {**_raw(plain)["logging"], "run_name": "hooked"}})
    train_run(plain)
    train_run(watched)
    a = load_checkpoint(run_folder(plain) / "checkpoint.pt")
    b = load_checkpoint(run_folder(watched) / "checkpoint.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert torch.equal(a["class_marginal"], b["class_marginal"])


def _raw(config):
    from debiaspl.config import to_dict
    return to_dict(config)


def test_hooks_write_tensorboard_tags_and_resume(tiny):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    straight = from_dict({**_raw(tiny(logging={"run_name": "straight"})), "hooks": ALL_HOOKS})
    paused = from_dict({**_raw(tiny(logging={"run_name": "paused"})), "hooks": ALL_HOOKS})
    train_run(straight)
    train_run(paused, until_step=3)
    train_run(paused)
    run_dir = run_folder(straight)
    events = EventAccumulator(str(run_dir), size_guidance={"images": 0, "histograms": 0}).Reload()
    tags = events.Tags()
    for tag in ("drift/kl_to_true", "drift/kl_to_uniform", "drift/kl_marginal_to_true", "drift/imbalance_ratio",
                "drift/debias_changed", "drift/precision/0", "drift/recall/9", "drift/count_ratio/3",
                "drift/mask_rate/1", "uncertainty/after_debiasing/ece", "uncertainty/before_debiasing/entropy_mean",
                "uncertainty/after_debiasing/auroc_entropy_wrong", "cartography/labeled/share_ambiguous",
                "cartography/unlabeled/pseudo_label_changes_mean"):
        assert tag in tags["scalars"], tag
    for tag in ("drift/pseudo_labels", "drift/pseudo_labels_masked", "uncertainty/after_debiasing/entropy_all"):
        assert tag in tags["histograms"], tag
    for tag in ("drift/class_marginal_vs_true", "drift/confusion", "cartography/labeled/data_map",
                "cartography/unlabeled/data_map", "cartography/unlabeled_before_debiasing/data_map",
                "uncertainty/after_debiasing/reliability"):
        assert tag in tags["images"], tag
    # the resumed run continues the hooks' curves and files exactly
    for name in ("labeled", "unlabeled"):
        assert (run_dir / f"cartography/{name}/td_metrics.jsonl").read_text() == \
            (run_folder(paused) / f"cartography/{name}/td_metrics.jsonl").read_text()
    # (the paused run also wrote cartography summaries when it paused: leave those lines out)
    def lines(config):
        rows = [json.loads(line) for line in (run_folder(config) / "metrics.jsonl").open()]
        return [{k: v for k, v in row.items() if k != "train/steps_per_second"} for row in rows
                if not any(key.startswith("cartography/") for key in row)]
    assert lines(straight) == lines(paused)


def test_hook_config_errors(tmp_path):
    bad = [("hooks:\n  - name: drfit\n", "hooks[0].name = 'drfit': must be one of drift, cartography, uncertainty, influence (did you mean drift?)"),
           ("hooks:\n  - name: drift\n    intervl: 3\n", "unknown key hooks[0].intervl; did you mean hooks[0].interval?"),
           ("hooks:\n  - name: drift\n  - name: drift\n", "hooks[1].name = 'drift': each hook may be listed once"),
           ("hooks:\n  - name: drift\n    interval: 0\n", "hooks[0].interval = 0: must be >= 1"),
           ("hooks: drift\n", "hooks must be a list")]
    for text, message in bad:
        path = tmp_path / "bad.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError) as info:
            load_experiment(path)
        assert message in str(info.value)
