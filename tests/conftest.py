"""Shared fixtures: tiny configs on the bundled digits (no download, seconds on a CPU)."""

import dataclasses
import io
import os
import subprocess
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch

from debiaspl.config import ExperimentConfig, from_dict

# Image folders decode into a cache under $XDG_CACHE_HOME: keep the tests' (and their subprocesses')
# out of the user's own cache, shared within one test session.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="debiaspl-tests-cache-")

SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg"


def tiny_config(run_dir: Path, **sections) -> ExperimentConfig:
    """A digits-LT run of a few steps with the small CNN; `sections` override per section (nested ones
    merge). The base algorithm's threshold is 0.5 unless a section says otherwise."""
    raw = {
        "data": {"dataset": "digits", "num_labeled_head": 20, "labeled_imbalance": 5, "num_unlabeled_head": 40,
                 "unlabeled_imbalance": 5, "num_workers": 0},
        "model": {"name": "small_cnn"},
        "train": {"steps": 6, "batch_size": 8, "unlabeled_ratio": 2, "device": "cpu"},
        "algorithm": {"marginal_momentum": 0.9},
        "eval": {"interval": 3, "batch_size": 128},
        "logging": {"run_dir": str(run_dir), "run_name": "tiny", "log_interval": 2, "checkpoint_interval": 3,
                    "progress_bar": False},
    }
    for section, values in sections.items():
        raw[section] = _merged(raw.get(section, {}), values)
    algorithm = raw["algorithm"]
    base = algorithm.get("name", "fixmatch+debiaspl").partition("+")[0]
    algorithm[base] = {"threshold": 0.5, **algorithm.get(base, {})}
    return from_dict(raw, source="tiny config")


def _merged(into: dict, update: dict) -> dict:
    return {**into, **{key: _merged(into.get(key, {}), value) if isinstance(value, dict) else value
                       for key, value in update.items()}}


@pytest.fixture
def tiny(tmp_path):
    return lambda **sections: tiny_config(tmp_path / "runs", **sections)


def assert_same_step_output(a, b) -> None:
    """Two StepOutputs equal bit for bit, field by field, the algorithm state included."""
    for field in dataclasses.fields(a):
        x, y = getattr(a, field.name), getattr(b, field.name)
        if field.name == "state":
            assert x.keys() == y.keys() and all(torch.equal(x[key], y[key]) for key in x), "state"
        else:
            assert torch.equal(x, y), field.name


def run_cli(*args, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`debiaspl ARGS` run by its main() in this process, with what it prints to stdout and stderr.

    An interpreter start with torch's import costs about 3 s, most of a refused command's time, so
    tests of what a command says run here; the tests of the `python -m debiaspl` entry itself, of
    torchrun and of kills keep real processes. A traceback here fails the test as it would there.
    """
    from debiaspl.cli import main

    out, err, before = io.StringIO(), io.StringIO(), os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = main([str(arg) for arg in args])
            except SystemExit as exc:  # argparse's usage errors exit from inside main()
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        os.chdir(before)
    return subprocess.CompletedProcess(["debiaspl", *map(str, args)], code, out.getvalue(), err.getvalue())
