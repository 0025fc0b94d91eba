"""The zero-shot setting: a student trained on a teacher's precomputed logits (data.teacher_logits),
as the official main_DebiasPL_ZeroShot.py trains one on CLIP's."""

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from debiaspl.algorithm import StepInputs, compose_algorithm
from debiaspl.algorithm.losses import teacher_fill_in_loss
from debiaspl.config import ConfigError, DataConfig, from_dict
from debiaspl.data.prepare import prepare_data
from debiaspl.engine.run import run_folder, train_run
from debiaspl.errors import UserError
from debiaspl.run_folder import RESULTS_NAME, RUN_INFO_NAME

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
# the teacher the README's zero-shot numbers come from: ~70% right, its histogram falling head to tail
from zero_shot_student import write_biased_teacher as biased_teacher  # noqa: E402


def test_teacher_fill_in_loss_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.5, -0.5]])
    mask = torch.tensor([1.0, 0.0, 0.0, 0.0])
    teacher = torch.tensor([1, 0, -1, 1])  # sample 0: the mask has it; 2: the teacher has no label
    unlabeled = torch.tensor(0.7)
    ce = F.cross_entropy(logits, torch.tensor([1, 0, 0, 1]), reduction="none")
    expected = (0.7 + (ce[1] + ce[3]) / 4) / 2  # the mean over all 4 samples, as the script's .mean()
    torch.testing.assert_close(teacher_fill_in_loss(logits, unlabeled, mask, teacher), expected)


def test_step_uses_the_teacher_only_where_given():
    algorithm = compose_algorithm("fixmatch+debiaspl")
    state = algorithm.initial_state(3, 8)
    generator = torch.Generator().manual_seed(0)
    logits = [torch.randn(n, 3, generator=generator) for n in (4, 8, 8)]
    inputs = StepInputs(logits[0], torch.tensor([0, 1, 2, 0]), logits[1], logits[2], torch.arange(8))
    plain = algorithm.step(inputs, state)
    taught = algorithm.step(dataclasses.replace(inputs, teacher_labels=torch.full((8,), -1)), state)
    assert torch.equal(taught.loss_unsup, plain.loss_unsup / 2)  # no teacher label: only the halving
    filled = algorithm.step(dataclasses.replace(inputs, teacher_labels=torch.arange(8) % 3), state)
    assert filled.loss_unsup > taught.loss_unsup and torch.equal(filled.pseudo_labels, plain.pseudo_labels)


def test_split_follows_the_teacher_confidence(tmp_path):
    logits, truth = biased_teacher(tmp_path / "t.npz")
    probs = torch.softmax(torch.tensor(logits), dim=-1)
    confident = (probs.max(dim=-1).values >= 0.95).numpy()
    data = prepare_data(DataConfig(dataset="digits", teacher_logits=str(tmp_path / "t.npz")))
    assert len(data.labeled.labels) == confident.sum() and len(data.unlabeled.labels) == (~confident).sum()
    # the labeled set carries the teacher's labels, not the truth; the unlabeled set keeps the truth for monitoring
    assert torch.equal(data.labeled.labels, probs.argmax(dim=-1)[torch.as_tensor(confident)])
    assert torch.equal(data.unlabeled.labels, torch.as_tensor(truth[~confident]))
    fill = data.unlabeled_teacher_labels
    low = probs.max(dim=-1).values[torch.as_tensor(~confident)] < 0.3
    assert (fill[low] == -1).all() and (fill[~low] >= 0).all()
    assert data.teacher_summary["labeled_accuracy"] > 0.95 and data.teacher_summary["unlabeled_accuracy"] < 0.8


def test_teacher_file_mistakes_are_user_errors(tmp_path):
    biased_teacher(tmp_path / "t.npz")
    archive = dict(np.load(tmp_path / "t.npz"))
    cases = {
        "short.npz": ({**archive, "sample_ids": archive["sample_ids"][1:], "logits": archive["logits"][1:]},
                      r"1 of the 1258 train images have no logits, e.g. 'digits/\d+' \(the dataset's ids look like"),
        "classes.npz": ({**archive, "logits": archive["logits"][:, :5]}, "logits have 5 classes, the dataset has 10"),
        "names.npz": ({**archive, "class_names": np.array([str(9 - c) for c in range(10)])}, "are not the dataset's"),
        "nolog.npz": ({"sample_ids": archive["sample_ids"]}, "has no logits"),
    }
    for name, (arrays, message) in cases.items():
        np.savez(tmp_path / name, **arrays)
        with pytest.raises(UserError, match=message):
            prepare_data(DataConfig(dataset="digits", teacher_logits=str(tmp_path / name)))
    (tmp_path / "text.npz").write_text("not an archive")
    with pytest.raises(UserError, match="cannot read it as an .npz"):
        prepare_data(DataConfig(dataset="digits", teacher_logits=str(tmp_path / "text.npz")))
    with pytest.raises(UserError, match="no labeled set"):
        prepare_data(DataConfig(dataset="digits", teacher_logits=str(tmp_path / "t.npz"), teacher_threshold=1.0))
    with pytest.raises(ConfigError, match="data.teacher_logits and data.label_file"):
        from_dict({"data": {"teacher_logits": "t.npz", "label_file": "l.csv"}})


def test_student_beats_its_biased_teacher_and_debiases_its_histogram(tmp_path):
    biased_teacher(tmp_path / "teacher.npz")
    config = from_dict({
        "data": {"dataset": "digits", "teacher_logits": str(tmp_path / "teacher.npz"), "num_workers": 0},
        "model": {"name": "small_cnn"},
        "train": {"steps": 400, "batch_size": 32, "unlabeled_ratio": 2, "device": "cpu"},
        "algorithm": {"name": "fixmatch+debiaspl", "marginal_momentum": 0.99, "fixmatch": {"threshold": 0.8}},
        "eval": {"interval": 400},
        "logging": {"run_dir": str(tmp_path / "runs"), "run_name": "student", "progress_bar": False}})
    train_run(config)
    folder = run_folder(config)
    teacher = json.loads((folder / RUN_INFO_NAME).read_text())["teacher"]
    student = json.loads((folder / RESULTS_NAME).read_text())
    # on the same unlabeled images: the student's (debiased) pseudo-labels against the teacher's labels
    assert student["pseudo_acc"] > teacher["unlabeled_accuracy"] + 0.1, (student["pseudo_acc"], teacher)
    assert student["pseudo_kl_to_true"] < teacher["unlabeled_kl_to_true"] / 3, (student["pseudo_kl_to_true"], teacher)
