"""benchmarks/vs_usb.py: the pieces that need no peer run (the timings themselves are a benchmark, not a test)."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import vs_usb  # noqa: E402


def test_wrn28_2_training_flops_per_image_match_the_flop_counter_by_hand():
    # forward of WRN-28-2 on 32 x 32: 0.428 GFLOP of convolutions and the linear layer; backward twice
    # that (grads of inputs and of weights), except the first conv, whose input needs no grad
    flops = vs_usb.training_flops_per_image()
    assert 1.27e9 < flops < 1.30e9


def test_matmul_peak_is_a_rate_of_the_dtype_asked_for():
    peak = vs_usb.matmul_peak_flops(torch.float32, size=256, repeats=2)
    assert 1e8 < peak < 1e14


def test_skips_cleanly_without_the_peer(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(vs_usb, "PEER", tmp_path / "no_peer")
    monkeypatch.setattr(sys, "argv", ["vs_usb.py"])
    vs_usb.main()
    assert "skipped" in capsys.readouterr().out
