import dataclasses
import json
import math

import pytest
import torch

from debiaspl.config import ConfigError, from_dict, load_experiment
from debiaspl.run_folder import load_checkpoint
from debiaspl.engine.run import run_folder, train_run
from debiaspl.hooks import CartographyHook, DriftHook, RunContext, StepRecord, UncertaintyHook

ALL_HOOKS = [{"name": "drift", "interval": 4, "figure_interval": 13},
             {"name": "cartography", "figure_interval": 13, "export_allenai": True},
             {"name": "uncertainty", "interval": 4, "figure_interval": 13},
             {"name": "influence", "write_interval": 8}]
# 26 steps of the tiny config cover two epochs of its labeled (96, B = 8) and unlabeled (199, 16) sets
LONGER = {"train": {"steps": 26}, "eval": {"interval": 13}, "logging": {"checkpoint_interval": 13}}


class RecordingLog:
    """A HookLog that keeps what hooks write."""

    def __init__(self):
        self.scalar_values, self.histograms, self.figures, self.layouts, self.pngs, self.texts = {}, {}, {}, [], [], {}
        self.figure_objects = {}

    def scalars(self, step, values):
        for tag, value in values.items():
            self.scalar_values.setdefault(tag, []).append((step, value))

    def histogram(self, tag, counts, edges, step):
        self.histograms.setdefault(tag, []).append((step, counts, edges))

    def figure(self, tag, figure, step, png_path=None):
        self.figures.setdefault(tag, []).append(step)
        self.figure_objects[tag] = figure  # the last one
        self.pngs.append(png_path)

    def text(self, tag, text, step=0):
        self.texts[tag] = text

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
        algorithm="fixmatch+debiaspl" if tau else "fixmatch", debiased=tau > 0, device=torch.device("cpu"))


def record(step, idx_lb, y_lb, logits_lb, idx_ulb, y_ulb, probs_weak, probs_pseudo, threshold=0.5, num_classes=3):
    probs_pseudo = torch.as_tensor(probs_pseudo, dtype=torch.float32)
    confidence, labels = probs_pseudo.max(1)
    marginal = torch.full((num_classes,), 1 / num_classes)
    zero = torch.tensor(0.0)
    return StepRecord(
        step=step, idx_lb=torch.tensor(idx_lb), y_lb=torch.tensor(y_lb),
        logits_lb=torch.as_tensor(logits_lb, dtype=torch.float32),
        probs_lb=torch.softmax(torch.as_tensor(logits_lb, dtype=torch.float32), dim=1), idx_ulb=torch.tensor(idx_ulb),
        y_ulb=torch.tensor(y_ulb), logits_weak=torch.as_tensor(probs_weak, dtype=torch.float32).log(),
        probs_weak=torch.as_tensor(probs_weak, dtype=torch.float32), probs_pseudo=probs_pseudo, pseudo_labels=labels,
        mask=(confidence >= threshold).float(), class_marginal_before=marginal, class_marginal=marginal, loss=zero,
        loss_sup=zero, loss_unsup=zero, lr=0.03)


def last(log, tag):
    return log.scalar_values[tag][-1][1]


# ---- drift: statistics on constructed inputs ---------------------------------------------------

def test_drift_statistics_by_hand(tmp_path):
    # truth [0, 0, 0, 1, 1, 2]; raw argmax [0, 0, 0, 0, 1, 0]; debiased pseudo-labels [0, 0, 1, 1, 2, 2]
    truth = [0, 0, 0, 1, 1, 2]
    ctx = context(tmp_path, unlabeled=6, unlabeled_batch=6, steps=1, unlabeled_labels=truth)
    hook = DriftHook(DriftHook.Options(interval=1, figure_interval=1))
    hook.on_train_start(ctx)
    raw = [[.9, .05, .05], [.8, .1, .1], [.6, .3, .1], [.5, .4, .1], [.2, .7, .1], [.5, .1, .4]]
    debiased = [[.9, .05, .05], [.8, .1, .1], [.35, .45, .2], [.3, .6, .1], [.1, .2, .7], [.3, .15, .55]]
    # confident (>= 0.5): [1, 1, 0, 1, 1, 1]
    hook.on_step_end(record(1, [0, 1], [0, 1], torch.zeros(2, 3), list(range(6)), truth, raw, debiased))
    log = ctx.log
    # confusion (rows truth): [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    for name, expected in (("precision", [1.0, 0.5, 0.5]), ("recall", [2 / 3, 0.5, 1.0]),
                           ("count_ratio", [2 / 3, 1.0, 2.0]), ("mask_rate", [1.0, 0.5, 1.0]),
                           ("pseudo_share", [1 / 3, 1 / 3, 1 / 3])):
        assert [last(log, f"drift/{name}/c{c}") for c in range(3)] == pytest.approx(expected), name
    # KL(pseudo-label share || truth) = 1/3 log(4/3); the reverse direction would be 0.0872
    assert last(log, "drift/kl_to_true") == pytest.approx(math.log(4 / 3) / 3, rel=1e-4)
    assert last(log, "drift/kl_to_uniform") == pytest.approx(0.0, abs=1e-6)
    assert last(log, "drift/debias_changed") == pytest.approx(4 / 6)
    assert last(log, "drift/imbalance_ratio") == pytest.approx(1.0)
    assert last(log, "drift/imbalance_ratio_masked") == pytest.approx(2.0)
    assert last(log, "drift/classes_without_pseudo_labels") == 0 and last(log, "drift/classes_without_pseudo_labels_masked") == 0
    one_class = context(tmp_path / "one", unlabeled=6, unlabeled_batch=6, steps=1, unlabeled_labels=truth)
    hook = DriftHook(DriftHook.Options(interval=1, figure_interval=1))
    hook.on_train_start(one_class)
    hook.on_step_end(record(1, [0, 1], [0, 1], torch.zeros(2, 3), list(range(6)), truth, raw, raw))  # pseudo-labels [0, 0, 0, 0, 1, 0]
    assert last(one_class.log, "drift/classes_without_pseudo_labels") == 1
    assert last(one_class.log, "drift/imbalance_ratio") == pytest.approx(5.0)  # 5 / the floor of 1
    assert log.histograms["drift/pseudo_labels"][-1][1] == [2, 2, 2]
    assert log.histograms["drift/pseudo_labels_before_debiasing"][-1][1] == [5, 1, 0]
    assert log.histograms["drift/pseudo_labels_masked"][-1][1] == [2, 1, 2]
    assert set(log.figures) == {"drift/class_marginal_vs_true", "drift/confusion", "drift/class_marginal_over_steps",
                                "drift/pseudo_labels_per_class"}
    assert tmp_path / "drift" / "confusion.png" in log.pngs
    # the bars of the interval: raw argmax, debiased pseudo-labels, confident ones, truth; each normalised
    bars = log.figure_objects["drift/pseudo_labels_per_class"].axes[0]
    heights = [[patch.get_height() for patch in container.patches] for container in bars.containers]
    assert len(heights) == 4
    for got, expected in zip(heights, ([5 / 6, 1 / 6, 0], [1 / 3] * 3, [2 / 5, 1 / 5, 2 / 5], [1 / 2, 1 / 3, 1 / 6])):
        assert got == pytest.approx(expected)
    assert [label.get_text() for label in bars.get_xticklabels()] == ["c0", "c1", "c2"]
    confusion = log.figure_objects["drift/confusion"].axes[0]
    assert confusion.get_xlabel() == "pseudo-label" and confusion.get_ylabel().startswith("true class")
    assert confusion.get_title() == "pseudo-labels vs hidden labels, steps 1-1"
    assert log.figure_objects["drift/class_marginal_vs_true"].axes[0].get_xlabel() == "class"
    assert log.texts["drift/histogram_bins"].endswith("0 = c0, 1 = c1, 2 = c2")


def test_drift_true_shares_sit_beside_q_hat_in_one_chart(tmp_path):
    truth = [0, 0, 0, 1, 1, 2]
    ctx = context(tmp_path, unlabeled=6, unlabeled_batch=6, steps=2, unlabeled_labels=truth)
    hook = DriftHook(DriftHook.Options(interval=1, figure_interval=10))
    hook.on_train_start(ctx)
    probs = [[.8, .1, .1]] * 6
    for step in (1, 2):
        hook.on_step_end(record(step, [0, 1], [0, 1], torch.zeros(2, 3), list(range(6)), truth, probs, probs))
    for c, share in enumerate([1 / 2, 1 / 3, 1 / 6]):
        assert ctx.log.scalar_values[f"drift/true_share/c{c}"] == [(1, pytest.approx(share)), (2, pytest.approx(share))]
    charts = [chart for layout in ctx.log.layouts for chart in layout["drift"].values()]
    assert ["Multiline", [r"pseudo/class_marginal/.*", r"drift/true_share/.*"]] in charts
    assert not any(chart[1] == [r"pseudo/class_marginal/.*"] for chart in charts)  # not a second q_hat chart


def drive_drift(hook, ctx, steps, marginals):
    probs = [[.8, .1, .1]] * 3
    for step in steps:
        rec = record(step, [0, 1], [0, 1], torch.zeros(2, 3), [0, 1, 2], [0, 1, 2], probs, probs)
        hook.on_step_end(dataclasses.replace(rec, class_marginal=torch.tensor(marginals[step - 1])))


def test_drift_q_hat_history_survives_checkpoint_and_resume(tmp_path):
    marginals = [[0.5 - 0.01 * s, 0.3, 0.2 + 0.01 * s] for s in range(8)]
    options = DriftHook.Options(interval=2, figure_interval=4)
    straight_ctx = context(tmp_path / "straight", unlabeled=3, unlabeled_batch=3, steps=8)
    straight = DriftHook(options)
    straight.on_train_start(straight_ctx)
    drive_drift(straight, straight_ctx, range(1, 9), marginals)
    straight.on_train_end(8)

    first_ctx = context(tmp_path / "paused", unlabeled=3, unlabeled_batch=3, steps=8)
    first = DriftHook(options)
    first.on_train_start(first_ctx)
    drive_drift(first, first_ctx, range(1, 6), marginals)  # pause after step 5: mid-interval
    state = torch.load(_saved(first.on_save_checkpoint(), tmp_path), weights_only=True)  # as the trainer keeps it
    resumed_ctx = context(tmp_path / "paused", unlabeled=3, unlabeled_batch=3, steps=8, start_step=5)
    resumed = DriftHook(options)
    resumed.on_load_checkpoint(state)
    resumed.on_train_start(resumed_ctx)
    drive_drift(resumed, resumed_ctx, range(6, 9), marginals)
    resumed.on_train_end(8)

    expected = [(step, pytest.approx(marginals[step - 1])) for step in (2, 4, 6, 8)]
    assert straight.marginal_history == expected and resumed.marginal_history == expected
    # the figure of the end draws the whole history, in the resumed run too
    for log in (straight_ctx.log, resumed_ctx.log):
        axes = log.figure_objects["drift/class_marginal_over_steps"].axes[0]
        solid = [line for line in axes.lines if line.get_linestyle() == "-"]
        assert [list(line.get_xdata()) for line in solid] == [[2, 4, 6, 8]] * 3
        assert list(solid[2].get_ydata()) == pytest.approx([marginals[s - 1][2] for s in (2, 4, 6, 8)])
    assert resumed_ctx.log.figures["drift/class_marginal_over_steps"] == [8]
    assert "drift/histogram_bins" not in resumed_ctx.log.texts  # written once, by the run that starts at step 0


def _saved(state, tmp_path):
    path = tmp_path / "hook_state.pt"
    torch.save(state, path)
    return path


@pytest.mark.parametrize("old_last_interval", ["format1", "format2"])
def test_drift_loads_checkpoints_without_q_hat_history(tmp_path, old_last_interval):
    marginal, confusion = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64), torch.eye(3, dtype=torch.long)
    last = (4, marginal, confusion) if old_last_interval == "format1" else (4, (marginal, confusion))
    state = {"sums": {}, "last_interval": last, "figures_step": 2}
    ctx = context(tmp_path, unlabeled=3, unlabeled_batch=3, steps=4, start_step=4)
    hook = DriftHook(DriftHook.Options(interval=2, figure_interval=4))
    hook.on_load_checkpoint(state)
    hook.on_train_start(ctx)
    hook.on_train_end(4)  # draws the old last interval: no bars of its pseudo-labels (not kept then), no history
    assert set(ctx.log.figures) == {"drift/class_marginal_vs_true", "drift/confusion"}
    assert hook.marginal_history == []
    assert hook.on_save_checkpoint()["marginal_history"] == {"steps": [], "values": []}


def test_drift_figures_follow_their_own_interval(tmp_path):
    ctx = context(tmp_path, unlabeled=3, unlabeled_batch=3, steps=12)
    hook = DriftHook(DriftHook.Options(interval=5, figure_interval=4))
    hook.on_train_start(ctx)
    probs = [[.8, .1, .1]] * 3
    for step in range(1, 13):
        hook.on_step_end(record(step, [0, 1], [0, 1], torch.zeros(2, 3), [0, 1, 2], [0, 1, 2], probs, probs))
    hook.on_train_end(12)
    # step 4: nothing flushed yet; step 8: the interval that ended at 5; step 12: the final flush at 12
    assert ctx.log.figures["drift/confusion"] == [5, 12]


# ---- uncertainty ---------------------------------------------------------------------------------

def entropy_of(row):
    return -sum(p * math.log(p) for p in row if p > 0) / math.log(len(row))


def test_uncertainty_statistics_by_hand(tmp_path):
    ctx = context(tmp_path, unlabeled=4, unlabeled_batch=4, steps=1, tau=0.4, unlabeled_labels=[0, 1, 2, 0])
    hook = UncertaintyHook(UncertaintyHook.Options(interval=1, figure_interval=1))
    hook.on_train_start(ctx)
    debiased = [[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.1, 0.1, 0.8], [0.2, 0.7, 0.1]]
    raw = [[0.6, 0.2, 0.2], [0.5, 0.25, 0.25], [0.1, 0.3, 0.6], [0.8, 0.1, 0.1]]
    # debiased labels [0, 0, 2, 1] vs truth [0, 1, 2, 0]: right, wrong, right, wrong
    hook.on_step_end(record(1, [0, 1], [0, 1], torch.zeros(2, 3), [0, 1, 2, 3], [0, 1, 2, 0], raw, debiased))
    log = ctx.log
    after, before = [entropy_of(r) for r in debiased], [entropy_of(r) for r in raw]
    prefix = "uncertainty/after_debiasing"
    assert last(log, f"{prefix}/entropy_mean") == pytest.approx(sum(after) / 4, rel=1e-5)
    assert last(log, "uncertainty/before_debiasing/entropy_mean") == pytest.approx(sum(before) / 4, rel=1e-5)
    # the training mask (max debiased prob >= 0.5) splits both views: samples 0, 2, 3 are confident
    assert last(log, f"{prefix}/entropy_masked") == pytest.approx((after[0] + after[2] + after[3]) / 3, rel=1e-5)
    assert last(log, f"{prefix}/entropy_unmasked") == pytest.approx(after[1], rel=1e-5)
    assert last(log, "uncertainty/before_debiasing/entropy_unmasked") == pytest.approx(before[1], rel=1e-5)
    # wrong ones have entropies {1.0, 0.73}, right ones {0, 0.58}: entropy separates them perfectly
    assert last(log, f"{prefix}/auroc_entropy_wrong") == pytest.approx(1.0)
    # raw labels [0, 0, 2, 0]: right, wrong, right, right; the wrong one (0.95) is the most uncertain
    assert last(log, "uncertainty/before_debiasing/auroc_entropy_wrong") == pytest.approx(1.0)
    # confidences 1.0 (right), 1/3 (wrong), 0.8 (right), 0.7 (wrong), one per bin of 15
    ece = (abs(1 - 1.0) + abs(0 - 1 / 3) + abs(1 - 0.8) + abs(0 - 0.7)) / 4
    assert last(log, f"{prefix}/ece") == pytest.approx(ece, rel=1e-5)
    assert last(log, f"{prefix}/entropy_by_class/c0") == pytest.approx((after[0] + after[1]) / 2, rel=1e-5)
    assert sum(log.histograms[f"{prefix}/entropy_all"][-1][1]) == 4
    assert f"{prefix}/reliability" in log.figures


# ---- cartography: hand-computed metrics, epoch-crossing batches, resume, allenai export --------------

# 4 labeled samples, B = 3, 4 steps: 12 positions = 3 complete epochs, batches cross epoch boundaries.
# TARGET[i][e]: probability of the target class for sample i in epoch e; the rest is split evenly.
TARGET = {0: [0.9, 0.8, 0.7], 1: [0.3, 0.7, 0.6], 2: [0.7, 0.2, 0.25], 3: [0.5, 0.4, 0.2]}
# unlabeled: 4 samples, batch 3; PSEUDO[i][e] is the pseudo-label of sample i in epoch e
PSEUDO = {0: [0, 0, 1], 1: [1, 2, 1], 2: [2, 2, 2], 3: [0, 1, 2]}
HIDDEN = [0, 1, 2, 0]


def peaked(target, p):
    row = [(1 - p) / 2] * 3
    row[target] = p
    return row


def run_cartography(tmp_path, steps_before_pause=None, export_from_the_resume=False):
    from debiaspl.data.loaders import stream_epoch_segments, stream_indices
    ctx = context(tmp_path, labeled=4, batch=3, unlabeled=4, unlabeled_batch=3, steps=4, unlabeled_labels=HIDDEN)
    ctx = RunContext(**{**ctx.__dict__, "labeled_labels": torch.zeros(4, dtype=torch.long)})
    options = CartographyHook.Options(figure_interval=100, export_allenai=True)
    hook = CartographyHook(CartographyHook.Options(figure_interval=100) if export_from_the_resume else options)
    hook.on_train_start(ctx)
    for step in range(1, 5):
        idx_lb = stream_indices(4, 3, step - 1, seed=0, stream=1)
        idx_ulb = stream_indices(4, 3, step - 1, seed=0, stream=2)
        epochs = [e for e, start, end in stream_epoch_segments(4, 3, step - 1) for _ in range(start, end)]
        logits_lb = [[math.log(v) for v in peaked(0, TARGET[int(i)][e])] for i, e in zip(idx_lb, epochs)]
        probs_ulb = [peaked(PSEUDO[int(i)][e], 0.6) for i, e in zip(idx_ulb, epochs)]
        hook.on_step_end(record(step, idx_lb.tolist(), [0, 0, 0], logits_lb, idx_ulb.tolist(),
                                [HIDDEN[int(i)] for i in idx_ulb], probs_ulb, probs_ulb))
        if step == steps_before_pause:
            hook.on_train_end(step)  # a pause writes files (the straight run overwrites them later)
            state = hook.on_save_checkpoint()
            hook = CartographyHook(options)
            hook.on_load_checkpoint(state)
            hook.on_train_start(RunContext(**{**ctx.__dict__, "start_step": step}))
    hook.on_train_end(4)
    return ctx


def test_an_export_turned_on_at_a_resume_writes_only_the_epochs_it_saw_whole(tmp_path, capsys):
    # 4 samples, 3 a step: epoch 1 spans steps 2-3, so a resume after step 2 sees it only in part
    run_cartography(tmp_path, steps_before_pause=2, export_from_the_resume=True)
    for name in ("labeled", "unlabeled"):
        folder = tmp_path / "cartography/allenai" / name / "training_dynamics"
        assert sorted(p.name for p in folder.iterdir()) == ["dynamics_epoch_2.jsonl"]
        rows = [json.loads(line) for line in (folder / "dynamics_epoch_2.jsonl").open()]
        assert len(rows) == 4 and all(any(v != 0 for v in row["logits_epoch_2"]) for row in rows)  # no zero rows
    assert "turned on at step 2: labeled files from epoch 2 on" in capsys.readouterr().err


def read_td_metrics(path):
    return {row["guid"]: row for row in map(json.loads, path.open())}


@pytest.mark.parametrize("pause", [None, 1, 2])
def test_cartography_metrics_by_hand(tmp_path, pause):
    run_cartography(tmp_path, pause)
    rows = read_td_metrics(tmp_path / "cartography/labeled/td_metrics.jsonl")
    for i, probs in TARGET.items():
        row = rows[f"lb{i}"]
        mean = sum(probs) / 3
        assert row["confidence"] == pytest.approx(mean, abs=1e-3)
        assert row["variability"] == pytest.approx(math.sqrt(sum((p - mean) ** 2 for p in probs) / 3), abs=1e-3)
        right = [p > 1 / 3 for p in probs]  # class 0 is the argmax iff p > (1 - p) / 2
        assert row["correctness"] == sum(right)
        forgotten = sum(a and not b for a, b in zip(right, right[1:]))
        assert row["forgetfulness"] == (1000 if not any(right) else forgotten)
        assert row["threshold_closeness"] == pytest.approx(row["confidence"] * (1 - row["confidence"]), abs=1e-6)
    ambiguous = (tmp_path / "cartography/labeled/ambiguous.csv").read_text().splitlines()
    assert ambiguous[0].startswith("rank,sample_id,label,confidence")
    assert ambiguous[1].split(",")[1] == "lb2"  # 0.7, 0.2, 0.25: the most variable
    hard = (tmp_path / "cartography/labeled/hard_to_learn.csv").read_text().splitlines()
    assert hard[1].split(",")[1] == "lb3"  # lowest confidence
    # unlabeled: the pseudo-label is the target (probability 0.6 every epoch); right = equals the hidden label
    rows = read_td_metrics(tmp_path / "cartography/unlabeled/td_metrics.jsonl")
    for i, labels in PSEUDO.items():
        assert rows[f"ulb{i}"]["confidence"] == pytest.approx(0.6, abs=1e-3)
        assert rows[f"ulb{i}"]["correctness"] == sum(label == HIDDEN[i] for label in labels)
    changes = {line.split(",")[1]: int(line.split(",")[-1])
               for line in (tmp_path / "cartography/unlabeled/ambiguous.csv").read_text().splitlines()[1:]}
    assert changes == {f"ulb{i}": sum(a != b for a, b in zip(labels, labels[1:])) for i, labels in PSEUDO.items()}


def test_cartography_draws_each_map_by_correctness_and_by_class(tmp_path):
    ctx = run_cartography(tmp_path)
    for name, right in (("labeled", "the prediction was the given label"),
                        ("unlabeled", "the pseudo-label was the hidden true label")):
        assert ctx.log.figures[f"cartography/{name}/data_map"] == [4]
        assert ctx.log.figures[f"cartography/{name}/data_map_by_class"] == [4]
        assert tmp_path / "cartography" / name / "data_map_by_class.png" in ctx.log.pngs
        data_map = ctx.log.figure_objects[f"cartography/{name}/data_map"]
        assert data_map.axes[1].get_ylabel().replace("\n", " ") == f"correctness: fraction of epochs {right}"
    # the unlabeled map's classes are the hidden labels [0, 1, 2, 0]: class 0 is the head
    bars = ctx.log.figure_objects["cartography/unlabeled/data_map_by_class"].axes[1]
    assert [label.get_text() for label in bars.get_xticklabels()] == ["c0", "c1", "c2"]
    assert [text.get_text() for text in bars.texts] == ["2", "1", "1"]


def read_like_allenai(folder):
    """allenai/cartography's reader: gold from the first epoch file, logits appended epoch by epoch."""
    dynamics = {}
    for epoch in range(len(list(folder.glob("dynamics_epoch_*.jsonl")))):
        for line in (folder / f"dynamics_epoch_{epoch}.jsonl").open():
            record_ = json.loads(line)
            entry = dynamics.setdefault(record_["guid"], {"gold": record_["gold"], "logits": []})
            entry["logits"].append(record_[f"logits_epoch_{epoch}"])
    return dynamics


@pytest.mark.parametrize("pause", [None, 2])
def test_allenai_export_reads_back(tmp_path, pause):
    run_cartography(tmp_path, pause)
    labeled = read_like_allenai(tmp_path / "cartography/allenai/labeled/training_dynamics")
    ours = read_td_metrics(tmp_path / "cartography/labeled/td_metrics.jsonl")
    assert sorted(labeled) == ["lb0", "lb1", "lb2", "lb3"]
    for guid, entry in labeled.items():
        assert len(entry["logits"]) == 3
        probs = [float(torch.softmax(torch.tensor(l), 0)[entry["gold"]]) for l in entry["logits"]]
        assert probs == pytest.approx(TARGET[int(guid[2:])], abs=1e-5)
        assert sum(probs) / 3 == pytest.approx(ours[guid]["confidence"], abs=1e-3)
        assert sum(int(torch.tensor(l).argmax()) == entry["gold"] for l in entry["logits"]) == ours[guid]["correctness"]
    unlabeled = read_like_allenai(tmp_path / "cartography/allenai/unlabeled/training_dynamics")
    assert {guid: entry["gold"] for guid, entry in unlabeled.items()} == {f"ulb{i}": HIDDEN[i] for i in range(4)}
    for guid, entry in unlabeled.items():
        assert [int(torch.tensor(l).argmax()) for l in entry["logits"]] == PSEUDO[int(guid[3:])]


def test_hooks_do_not_read_the_device_every_step(tmp_path):
    """On the meta device any read of a value (.item(), .tolist(), .cpu(), boolean masks) raises."""
    meta = torch.device("meta")
    ctx = context(tmp_path, labeled=4, batch=2, unlabeled=6, unlabeled_batch=3, steps=100)
    ctx = RunContext(**{**ctx.__dict__, "device": meta, "labeled_labels": ctx.labeled_labels.to(meta),
                        "unlabeled_labels": ctx.unlabeled_labels.to(meta)})
    hooks = [DriftHook(DriftHook.Options(interval=50, figure_interval=50)),
             CartographyHook(CartographyHook.Options(figure_interval=50, export_allenai=False)),
             UncertaintyHook(UncertaintyHook.Options(interval=50, figure_interval=50))]
    from debiaspl.hooks.influence import InfluenceHook
    hooks.append(InfluenceHook(InfluenceHook.Options(every=1, write_interval=50)))
    for hook in hooks:
        hook.on_train_start(ctx)
    zeros = lambda *shape, dtype=torch.float32: torch.zeros(*shape, dtype=dtype, device=meta)  # noqa: E731
    for step in range(1, 4):
        rec = StepRecord(
            step=step, idx_lb=zeros(2, dtype=torch.long), y_lb=zeros(2, dtype=torch.long), logits_lb=zeros(2, 3),
            probs_lb=zeros(2, 3),
            idx_ulb=zeros(3, dtype=torch.long), y_ulb=zeros(3, dtype=torch.long), logits_weak=zeros(3, 3),
            probs_weak=zeros(3, 3), probs_pseudo=zeros(3, 3), pseudo_labels=zeros(3, dtype=torch.long),
            mask=zeros(3), class_marginal_before=zeros(3), class_marginal=zeros(3), loss=zeros(()),
            loss_sup=zeros(()), loss_unsup=zeros(()), lr=0.03, features_lb=zeros(2, 5), features_weak=zeros(3, 5))
        for hook in hooks:
            hook.on_step_end(rec)


# ---- with the trainer ------------------------------------------------------------------------------

def test_hooks_leave_the_weights_bit_identical(tiny):
    plain = tiny(logging={"run_name": "plain"}, algorithm={"fixmatch": {"threshold": 0.0}})
    watched = from_dict({**_raw(plain), "hooks": ALL_HOOKS, "logging": {**_raw(plain)["logging"], "run_name": "hooked"}})
    train_run(plain)
    train_run(watched)
    a = load_checkpoint(run_folder(plain) / "checkpoint.pt")
    b = load_checkpoint(run_folder(watched) / "checkpoint.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert torch.equal(a["algorithm"]["class_marginal"], b["algorithm"]["class_marginal"])


def _read_csv(path):
    import csv
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _raw(config):
    from debiaspl.config import to_dict
    return to_dict(config)


def test_hooks_write_tensorboard_tags_and_resume(tiny):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    straight = from_dict({**_raw(tiny(**{**LONGER, "logging": {**LONGER["logging"], "run_name": "straight"}})),
                          "hooks": ALL_HOOKS})
    paused = from_dict({**_raw(tiny(**{**LONGER, "logging": {**LONGER["logging"], "run_name": "paused"}})),
                        "hooks": ALL_HOOKS})
    train_run(straight)
    train_run(paused, until_step=11)
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
    assert "drift/true_share/9" in tags["scalars"] and "pseudo/class_marginal/9" in tags["scalars"]
    for tag in ("drift/pseudo_labels", "drift/pseudo_labels_masked", "uncertainty/after_debiasing/entropy_all"):
        assert tag in tags["histograms"], tag
    for tag in ("drift/class_marginal_vs_true", "drift/confusion", "cartography/labeled/data_map",
                "cartography/unlabeled/data_map", "cartography/unlabeled_before_debiasing/data_map",
                "uncertainty/after_debiasing/reliability", "drift/class_marginal_over_steps",
                "drift/pseudo_labels_per_class", "cartography/unlabeled/data_map_by_class"):
        assert tag in tags["images"], tag
    # the end-of-training galleries: in TensorBoard, and as PNG + CSV whose tiles are the rankings' heads
    for tag in ("cartography/labeled/gallery", "cartography/unlabeled/gallery", "uncertainty/gallery",
                "influence/self_influence_gallery"):
        assert tag in tags["images"], tag
    gallery = _read_csv(run_dir / "cartography/unlabeled/gallery.csv")
    # the gallery's row keeps to the map's region: the CSV's lowest confidences, less the ambiguous ones
    hard = [row["sample_id"] for row in _read_csv(run_dir / "cartography/unlabeled/hard_to_learn.csv")
            if float(row["variability"]) < 0.2 and float(row["confidence"]) < 0.5]
    assert [row["sample_id"] for row in gallery if row["row"] == "hard-to-learn"] == hard[:8]
    assert {row["row"] for row in gallery} == {"easy-to-learn", "ambiguous", "hard-to-learn"}
    classes = [str(c) for c in range(10)]  # the digits' class names
    assert all(row["label"] in classes and row["pseudo_label"] in classes for row in gallery)
    influence = _read_csv(run_dir / "influence/self_influence_online_gallery.csv")
    ranking = _read_csv(run_dir / "influence/self_influence_online.csv")
    assert [(r["sample_id"], r["label"]) for r in influence] == [(r["sample_id"], r["label"]) for r in ranking[:16]]
    uncertain = _read_csv(run_dir / "uncertainty/gallery.csv")
    top = [float(r["score"]) for r in uncertain if r["row"] == "most uncertain pseudo-labels"]
    assert len(top) == 10 and top == sorted(top, reverse=True)
    wrong = [r for r in uncertain if r["row"] == "most confident wrong pseudo-labels"]
    assert wrong and all(r["label"] != r["pseudo_label"] for r in wrong)
    for name in ("cartography/unlabeled/gallery.csv", "uncertainty/gallery.csv", "influence/self_influence_online_gallery.csv"):
        assert (run_dir / name).read_text() == (run_folder(paused) / name).read_text(), name
    # one Custom Scalars layout holds every hook's category (TensorBoard shows the last one written)
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata
    layouts = events.Tensors(metadata.CONFIG_SUMMARY_TAG)
    last = layout_pb2.Layout.FromString(layouts[-1].tensor_proto.string_val[0])
    assert {category.title for category in last.category} == {"drift", "uncertainty"}
    # the resumed run continues the hooks' curves and files exactly, q_hat's history too
    histories = [load_checkpoint(run_folder(config) / "checkpoint.pt")["hooks"]["drift"]["marginal_history"]
                 for config in (straight, paused)]
    assert histories[0]["steps"] == [4, 8, 12, 16, 20, 24, 26] and histories[0] == histories[1]
    assert (run_dir / "influence/self_influence_online.csv").read_text() == \
        (run_folder(paused) / "influence/self_influence_online.csv").read_text()
    for name in ("labeled", "unlabeled"):
        assert (run_dir / f"cartography/{name}/td_metrics.jsonl").read_text() == \
            (run_folder(paused) / f"cartography/{name}/td_metrics.jsonl").read_text()
    def lines(config):
        rows = [json.loads(line) for line in (run_folder(config) / "metrics.jsonl").open()]
        return [{k: v for k, v in row.items() if k != "train/steps_per_second"} for row in rows]
    assert lines(straight) == lines(paused)  # a pause adds no points


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


def test_influence_features_are_what_the_classifier_read_under_dropout():
    # TracIn's last-layer gradient is taken at the classifier's input: after model.dropout in training
    import torch.nn.functional as F

    from debiaspl.engine.trainer import LogitsAndFeatures
    from debiaspl.metrics.influence import last_layer_self_influence
    from debiaspl.models import build_model
    torch.manual_seed(0)
    model = build_model("small_cnn", 4, in_channels=3, dropout=0.5).double().train()
    x, y = torch.randn(3, 3, 16, 16, dtype=torch.double), torch.tensor([0, 1, 2])
    logits, features = LogitsAndFeatures(model)(x)
    by_autograd = []
    for i in range(3):
        grads = torch.autograd.grad(F.cross_entropy(logits[i:i + 1], y[i:i + 1]),
                                    [model.classifier.weight, model.classifier.bias], retain_graph=True)
        by_autograd.append(sum(g.square().sum() for g in grads).item())
    hook = last_layer_self_influence(torch.softmax(logits, 1).detach(), y, features.detach(), 1.0)
    torch.testing.assert_close(hook, torch.tensor(by_autograd, dtype=hook.dtype), rtol=1e-9, atol=0)
