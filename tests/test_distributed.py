"""torchrun with 2 CPU processes (gloo) computes what one process computes for the same global batch."""

import json
import socket
import subprocess
import sys

import pytest
import torch

from conftest import tiny_config
from debiaspl.cli import main
from debiaspl.config import save_config
from debiaspl.engine.run import run_folder
from debiaspl.run_folder import load_checkpoint


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def marginal_trajectory(config):
    rows = [json.loads(line) for line in (run_folder(config) / "metrics.jsonl").open()]
    return torch.tensor([[row[f"pseudo/class_marginal/{c}"] for c in range(10)] for row in rows
                         if "pseudo/class_marginal/0" in row])


@pytest.mark.parametrize("augment_on, algorithm", [("loader", "fixmatch+debiaspl"), ("device", "fixmatch+debiaspl"),
                                                   ("loader", "flexmatch+debiaspl")])
def test_two_processes_match_one(tmp_path, augment_on, algorithm):
    # GroupNorm: BatchNorm statistics would be per process on the CPU (SyncBatchNorm needs CUDA).
    # fp32: bf16 rounding depends on how the batch is split, so only float32 can match at 1e-6.
    # threshold 0: every pseudo-label counts, so the unlabeled loss shapes the weights from step 1,
    # and FlexMatch records every sample of the batch: only the gathered global batch gives rank 0
    # the state one process has.
    from debiaspl.config import from_dict, to_dict
    configs = {}
    for name in ("one", "two"):
        base = algorithm.partition("+")[0]
        config = tiny_config(tmp_path / "runs", model={"name": "small_cnn_gn"},
                             algorithm={"name": algorithm, base: {"threshold": 0.0}},
                             train={"steps": 4, "batch_size": 8, "precision": "fp32"}, data={"augment_on": augment_on},
                             eval={"interval": 4}, logging={"run_name": name, "log_interval": 1, "checkpoint_interval": 4})
        # hooks see the gathered global batch under torchrun
        configs[name] = from_dict({**to_dict(config), "hooks": [{"name": "drift", "interval": 2},
                                                                {"name": "uncertainty", "interval": 2}]})
        save_config(configs[name], tmp_path / f"{name}.yaml")
    assert main(["train", str(tmp_path / "one.yaml")]) == 0  # the reference: one process, this one
    for until in (["--until-step", "2"], []):  # paused and resumed on 2 processes
        # a fresh free port each launch: a fixed one may still be held by the previous launch
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
                    "--master_addr=127.0.0.1", f"--master_port={free_port()}",
                    "-m", "debiaspl", "train", str(tmp_path / "two.yaml")]
        two = subprocess.run(torchrun + until, capture_output=True, text=True)
        assert two.returncode == 0, two.stderr[-3000:]
    run_info = json.loads((run_folder(configs["two"]) / "run_info.json").read_text())
    assert run_info["processes"] == 2 and run_info["distributed_backend"] == "gloo"
    trajectory_one, trajectory_two = marginal_trajectory(configs["one"]), marginal_trajectory(configs["two"])
    assert trajectory_one.shape == (4, 10)
    assert torch.allclose(trajectory_one, trajectory_two, atol=1e-6)
    assert not torch.allclose(trajectory_one[-1], torch.full((10,), 0.1))  # q_hat moved
    a = load_checkpoint(run_folder(configs["one"]) / "checkpoint.pt")
    b = load_checkpoint(run_folder(configs["two"]) / "checkpoint.pt")
    for key, value in a["model"].items():
        assert torch.allclose(value.float(), b["model"][key].float(), atol=1e-5), key
    assert not torch.equal(a["model"]["classifier.weight"], a["ema"]["classifier.weight"])
    assert a["algorithm"].keys() == b["algorithm"].keys()
    if "selected_label" in a["algorithm"]:
        assert torch.equal(a["algorithm"]["selected_label"], b["algorithm"]["selected_label"])
        # every sample of the 4 global batches of 16 (no repeats within the first epoch of 199), not half
        assert (b["algorithm"]["selected_label"] >= 0).sum() == 4 * 16
    rows = {name: [json.loads(line) for line in (run_folder(config) / "metrics.jsonl").open()]
            for name, config in configs.items()}
    hook_rows = {name: [row for row in value if "drift/kl_to_true" in row] for name, value in rows.items()}
    assert len(hook_rows["one"]) == len(hook_rows["two"]) == 2
    for row_one, row_two in zip(hook_rows["one"], hook_rows["two"]):
        for tag in ("drift/kl_to_true", "drift/precision/0", "drift/debias_changed", "drift/imbalance_ratio"):
            assert row_one[tag] == pytest.approx(row_two[tag], abs=1e-6, nan_ok=True), tag


def test_backend_is_nccl_only_when_every_process_has_a_gpu(monkeypatch):
    from debiaspl.engine.distributed import Distributed

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    two_on_one_gpu = Distributed(rank=1, world_size=2, local_rank=1, local_world_size=2)
    assert two_on_one_gpu.backend("cuda") == "gloo" and two_on_one_gpu.cuda_device() == torch.device("cuda", 0)
    assert two_on_one_gpu.backend("cpu") == "gloo"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert two_on_one_gpu.backend("cuda") == "nccl" and two_on_one_gpu.cuda_device() == torch.device("cuda", 1)
    # four processes over two machines of two GPUs: each machine counts its own
    assert Distributed(rank=3, world_size=4, local_rank=1, local_world_size=2).backend("cuda") == "nccl"


def test_local_world_size_comes_from_torchrun(monkeypatch):
    from debiaspl.engine.distributed import Distributed

    for key, value in {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)
    assert Distributed.from_environment() == Distributed(3, 4, 1, 2)
