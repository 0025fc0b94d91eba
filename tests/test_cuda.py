"""What only a GPU can check: bf16 autocast, channels_last, torch.compile, resume and DDP on CUDA.

Marked `cuda` and skipped without a CUDA device; benchmarks/gpu_check.sh runs them (`pytest -m cuda`)
whenever a session is lent a GPU. Tolerances: convolutions on CUDA use TF32 by default, so fp32 runs
of different layouts or batch splits agree to about 1e-3, not bit for bit.
"""

import json
import math
import subprocess
import sys

import pytest
import torch

from conftest import tiny_config
from debiaspl.config import from_dict, save_config, to_dict
from debiaspl.engine.run import run_folder, train_run
from debiaspl.run_folder import load_checkpoint
from test_distributed import free_port, marginal_trajectory
from test_trainer import assert_same_tensors, metric_lines

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def cuda_config(tmp_path, name: str, **sections):
    train = {"device": "cuda", "steps": 6, "precision": "fp32", **sections.pop("train", {})}
    return tiny_config(tmp_path / "runs", train=train, logging={"run_name": name, "log_interval": 1}, **sections)


def test_bf16_autocast_trains_with_finite_losses_and_a_float32_marginal(tmp_path):
    config = cuda_config(tmp_path, "bf16", train={"precision": "bf16"})
    results = train_run(config)
    assert json.loads((run_folder(config) / "run_info.json").read_text())["bf16_autocast"] is True
    assert math.isfinite(results["top1"])
    losses = [row["train/loss"] for row in map(json.loads, (run_folder(config) / "metrics.jsonl").open())
              if "train/loss" in row]
    assert losses and all(math.isfinite(loss) for loss in losses)
    marginal = load_checkpoint(run_folder(config) / "checkpoint.pt")["algorithm"]["class_marginal"]
    assert marginal.dtype == torch.float32 and not torch.allclose(marginal, torch.full_like(marginal, 0.1))


@pytest.mark.parametrize("option", [{"channels_last": True}, {"compile": True}, {"compile": True, "precision": "bf16"}])
def test_layout_and_compile_compute_what_the_plain_run_computes(tmp_path, option):
    plain = cuda_config(tmp_path, "plain", train={"channels_last": False, "precision": option.get("precision", "fp32")})
    changed = cuda_config(tmp_path, "changed", train={"channels_last": False, **option})
    train_run(plain)
    train_run(changed)
    a, b = marginal_trajectory(plain), marginal_trajectory(changed)
    atol = 2e-2 if option.get("precision") == "bf16" else 2e-3
    assert a.shape[0] == 6 and torch.allclose(a, b, atol=atol)


def test_device_augmentation_run_matches_the_loader_run(tmp_path):
    on_device = cuda_config(tmp_path, "device", data={"augment_on": "device"})
    in_loader = cuda_config(tmp_path, "loader", data={"augment_on": "loader"})
    train_run(on_device)
    train_run(in_loader)
    assert torch.allclose(marginal_trajectory(on_device), marginal_trajectory(in_loader), atol=2e-3)


def test_resume_on_cuda_equals_uninterrupted_with_deterministic_kernels(tmp_path):
    options = {"train": {"deterministic": True}, "model": {"dropout": 0.3}}
    straight = cuda_config(tmp_path, "straight", **options)
    paused = cuda_config(tmp_path, "paused", **options)
    train_run(straight)
    assert train_run(paused, until_step=3)["step"] == 3
    train_run(paused)
    a = load_checkpoint(run_folder(straight) / "checkpoint.pt")
    b = load_checkpoint(run_folder(paused) / "checkpoint.pt")
    for key in ("model", "ema", "optimizer", "algorithm", "step"):
        assert_same_tensors(a[key], b[key], key)
    assert metric_lines(straight) == metric_lines(paused)


@pytest.mark.parametrize("model", ["small_cnn_gn", "small_cnn"])  # small_cnn: BatchNorm, so SyncBatchNorm
def test_two_processes_on_one_gpu_match_one(tmp_path, model):
    configs = {}
    for name in ("one", "two"):
        config = cuda_config(tmp_path, name, model={"name": model}, algorithm={"fixmatch": {"threshold": 0.0}},
                             train={"steps": 4, "batch_size": 8}, eval={"interval": 4})
        configs[name] = from_dict(to_dict(config))
        save_config(configs[name], tmp_path / f"{name}.yaml")
    one = subprocess.run([sys.executable, "-m", "debiaspl", "train", str(tmp_path / "one.yaml")],
                         capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-3000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
                "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "debiaspl", "train",
                str(tmp_path / "two.yaml")]
    two = subprocess.run(torchrun, capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-3000:]
    run_info = json.loads((run_folder(configs["two"]) / "run_info.json").read_text())
    expected_backend = "nccl" if torch.cuda.device_count() >= 2 else "gloo"
    assert run_info["processes"] == 2 and run_info["distributed_backend"] == expected_backend
    assert torch.allclose(marginal_trajectory(configs["one"]), marginal_trajectory(configs["two"]), atol=2e-3)
