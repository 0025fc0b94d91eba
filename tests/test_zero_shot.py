"""Zero-shot DebiasPL over precomputed logits: the pure stream and the `debiaspl debias-logits` verb."""

import json

import numpy as np
import pytest
import torch

from conftest import run_cli as debiaspl
from debiaspl.algorithm import debias_logit_stream, debias_logits, uniform_class_marginal, update_class_marginal


def biased_logits(num_per_class=400, num_classes=5, bias=2.0, seed=0):
    """Balanced true classes; the 'model' adds a head-favouring offset to every logit (as a
    classifier trained on long-tailed data does), so its argmax over-predicts class 0."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(num_classes), num_per_class)
    logits = rng.normal(0, 1, (len(labels), num_classes))
    logits[np.arange(len(labels)), labels] += 2.0
    logits += np.linspace(bias, 0, num_classes)
    return logits.astype(np.float32), labels


def test_two_passes_start_from_the_first_pass_estimate_and_big_endian_files_read(tmp_path):
    logits, labels = biased_logits()
    np.save(tmp_path / "logits.npy", logits.astype(">f4"))
    np.save(tmp_path / "labels.npy", labels)
    one = debiaspl("debias-logits", tmp_path / "logits.npy", "--labels", tmp_path / "labels.npy", "--tau", 1,
                   "--momentum", 0.99, "--batch-size", 40, "--out", tmp_path / "one.npz")
    two = debiaspl("debias-logits", tmp_path / "logits.npy", "--labels", tmp_path / "labels.npy", "--tau", 1,
                   "--momentum", 0.99, "--batch-size", 40, "--passes", 2, "--out", tmp_path / "two.npz")
    assert one.returncode == two.returncode == 0, one.stderr + two.stderr
    # 50 batches against a window of 100: one pass leaves q_hat near uniform, a second starts from the estimate
    assert "note: only 50 q_hat updates" in one.stdout and "note" not in two.stdout
    kl_one = json.loads((tmp_path / "one.json").read_text())["after"]["kl_to_true"]
    kl_two = json.loads((tmp_path / "two.json").read_text())["after"]["kl_to_true"]
    assert kl_two < kl_one


def test_stream_matches_the_training_order_of_operations():
    logits = torch.randn(10, 3) + torch.tensor([1.0, 0.0, -1.0])
    result = debias_logit_stream(logits, tau=0.7, momentum=0.5, batch_size=4)  # file order
    marginal, expected = uniform_class_marginal(3), []
    for batch in logits.split(4):  # debias with q_hat from before the batch, then update with the raw softmax
        expected.append(torch.softmax(debias_logits(batch, marginal, 0.7), dim=-1))
        marginal = update_class_marginal(marginal, torch.softmax(batch, dim=-1), 0.5)
    expected = torch.cat(expected)
    torch.testing.assert_close(result.confidence, expected.max(dim=-1).values)
    assert torch.equal(result.labels, expected.argmax(dim=-1))
    torch.testing.assert_close(result.class_marginal, marginal)
    assert torch.equal(result.plain_labels, logits.argmax(dim=1))


def test_tau_zero_is_the_argmax_and_outputs_keep_the_input_order():
    logits, _ = biased_logits()
    result = debias_logit_stream(torch.from_numpy(logits), tau=0.0, momentum=0.9, batch_size=64,
                                 generator=torch.Generator().manual_seed(1))
    assert torch.equal(result.labels, torch.from_numpy(logits).argmax(dim=1))
    torch.testing.assert_close(result.confidence, torch.softmax(torch.from_numpy(logits), 1).max(1).values)


def test_debiasing_removes_a_constructed_class_bias():
    logits, labels = biased_logits()
    labels = torch.from_numpy(labels)
    before = torch.from_numpy(logits).argmax(dim=1)
    result = debias_logit_stream(logits, tau=1.0, momentum=0.9, batch_size=50,
                                 generator=torch.Generator().manual_seed(0))  # a numpy array in: read by rows
    share_before = torch.bincount(before, minlength=5) / len(labels)
    share_after = torch.bincount(result.labels, minlength=5) / len(labels)
    assert share_before[0] > 0.35 and share_after[0] < share_before[0] - 0.07  # the head class loses most of its excess
    assert (share_after - 0.2).abs().max() < (share_before - 0.2).abs().max() / 2
    assert (result.labels == labels).float().mean() > (before == labels).float().mean() + 0.03
    assert result.class_marginal[0] > result.class_marginal[4]  # q_hat learnt the model's bias


def test_debias_logits_verb_writes_labels_and_reports_before_and_after(tmp_path):
    logits, labels = biased_logits()
    np.save(tmp_path / "logits.npy", logits)
    np.save(tmp_path / "labels.npy", labels)
    proc = debiaspl("debias-logits", tmp_path / "logits.npy", "--labels", tmp_path / "labels.npy", "--tau", 1,
                    "--momentum", 0.9, "--batch-size", 50, "--threshold", 0.5)
    assert proc.returncode == 0, proc.stderr
    assert "balanced_accuracy" in proc.stdout and "note" not in proc.stdout
    saved = np.load(tmp_path / "logits.debiased.npz")
    assert saved["pseudo_label"].shape == saved["confidence"].shape == (2000,)
    assert np.array_equal(saved["plain_label"], logits.argmax(1))
    summary = json.loads((tmp_path / "logits.debiased.json").read_text())
    assert summary["after"]["balanced_accuracy"] > summary["before"]["balanced_accuracy"]
    assert summary["after"]["kl_to_true"] < summary["before"]["kl_to_true"]
    assert summary["after"]["accuracy"] == pytest.approx((saved["pseudo_label"] == labels).mean())
    assert 0 <= summary["after"]["confident_fraction"] <= 1

    # file order on class-sorted logits: q_hat chases the current class; it still runs, as asked
    proc = debiaspl("debias-logits", tmp_path / "logits.npy", "--file-order", "--out", tmp_path / "ordered.npz",
                    "--momentum", 0.999)
    assert proc.returncode == 0 and "note: only 8 q_hat updates" in proc.stdout and (tmp_path / "ordered.json").is_file()


@pytest.mark.parametrize("args, message", [
    (["missing.npy"], "no such file"),
    (["vector.npy"], "shape [N, C]"),
    (["logits.npy", "--labels", "short.npy"], "shape [2000]"),
    (["logits.npy", "--labels", "out_of_range.npy"], "0..4"),
    (["logits.npy", "--momentum", "1"], "--momentum"),
    (["nan.npy"], "row 3, column 2 is nan"),
    (["archive.npz"], ".npz archive"),
    (["logits.npy", "--out", "."], "cannot write"),
])
def test_debias_logits_mistakes_are_one_line(tmp_path, args, message):
    logits, labels = biased_logits()
    np.save(tmp_path / "logits.npy", logits)
    np.save(tmp_path / "vector.npy", logits[:, 0])
    np.save(tmp_path / "short.npy", labels[:10])
    np.save(tmp_path / "out_of_range.npy", labels + 1)
    logits[3, 2] = np.nan
    np.save(tmp_path / "nan.npy", logits)
    np.savez(tmp_path / "archive.npz", logits=logits)
    proc = debiaspl("debias-logits", *[tmp_path / a if a.endswith((".npy", ".npz")) or a == "." else a for a in args])
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
