"""User mistakes that used to be accepted silently or end in a traceback: each must be one line on
stderr naming the key, file or value, exit status 2, and nothing written."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import run_cli as debiaspl, tiny_config
from debiaspl.config import ConfigError, from_dict, load_experiment, save_config, to_dict
from debiaspl.config.schema import MAX_SEED


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The single `debiaspl: error:` line of a refused command (no traceback, no usage block)."""
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("debiaspl: error: "), proc.stderr
    return lines[0]


def experiment_text(tmp_path: Path) -> str:
    """A tiny experiment as a full YAML file, its runs under tmp_path/runs."""
    return yaml.safe_dump(to_dict(tiny_config(tmp_path / "runs")), sort_keys=False)


def line_of(text: str, needle: str, occurrence: int) -> int:
    """1-based line number of the occurrence-th line (1 = first) that equals `needle`."""
    numbers = [number for number, line in enumerate(text.splitlines(), start=1) if line == needle]
    return numbers[occurrence - 1]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """One tiny trained run folder; tests copy it before they damage it."""
    from debiaspl.engine.run import train_run

    config = tiny_config(tmp_path_factory.mktemp("trained") / "runs")
    train_run(config)
    return Path(config.logging.run_dir) / config.logging.run_name


def damaged_copy(finished_run: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "runs" / "tiny"
    shutil.copytree(finished_run, folder)
    return folder


# 1. a key given twice ---------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["top-level section", "key inside a section", "hook option"])
def test_a_key_given_twice_names_its_dotted_path_and_lines(tmp_path, where):
    text = experiment_text(tmp_path)
    if where == "top-level section":
        text += "train:\n  steps: 4\n"
        key, needle, nth = "train", "train:", 1
    elif where == "key inside a section":
        text = text.replace("  lr: 0.03\n", "  lr: 0.03\n  lr: 0.1\n")
        key, needle, nth = "optim.lr", "  lr: 0.03", 1
    else:
        text = text.replace("hooks: []\n", "hooks:\n- name: drift\n  interval: 3\n  interval: 4\n")
        key, needle, nth = "hooks[0].interval", "  interval: 3", 2  # the first is eval.interval
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    first = line_of(text, needle, nth)
    second = line_of(text, needle, 2) if where == "top-level section" else first + 1
    line = one_error_line(debiaspl("train", path, cwd=tmp_path))
    assert f"{path}: " in line and f"key {key} appears twice (lines {first} and {second})" in line
    assert not (tmp_path / "runs").exists()


def test_a_key_given_twice_in_a_base_file_names_that_file(tmp_path):
    (tmp_path / "base.yaml").write_text("train:\n  steps: 3\n  steps: 4\n")
    child = tmp_path / "child.yaml"
    child.write_text("base: base.yaml\n")
    with pytest.raises(ConfigError, match=r"base\.yaml: .*key train\.steps appears twice \(lines 2 and 3\)"):
        load_experiment(child)


def test_a_merge_key_overridden_beside_it_is_not_a_key_given_twice(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text("train:\n  <<: {steps: 3, seed: 1}\n  steps: 4\n")
    config = load_experiment(path)
    assert (config.train.steps, config.train.seed) == (4, 1)


def test_a_key_given_twice_in_a_run_folders_config_is_refused(finished_run, tmp_path):
    folder = damaged_copy(finished_run, tmp_path)
    config = folder / "config.yaml"
    config.write_text(config.read_text().replace("  seed: 0\n", "  seed: 0\n  seed: 1\n"))
    for verb in (["report", folder, "--out", tmp_path / "report"], ["train", "--resume", folder]):
        line = one_error_line(debiaspl(*verb, cwd=tmp_path))
        assert "config.yaml: " in line and "key train.seed appears twice" in line, verb
    assert not (tmp_path / "report").exists()


# 2. integer settings out of what torch and numpy accept ----------------------------------------

@pytest.mark.parametrize("key", ["train.seed", "data.split_seed"])
def test_a_seed_beyond_63_bits_is_refused_before_a_folder_is_made(tmp_path, key):
    path = tmp_path / "big.yaml"
    path.write_text(experiment_text(tmp_path))
    line = one_error_line(debiaspl("train", path, "--set", f"{key}={2**64}", cwd=tmp_path))
    assert f"{key} = {2**64}: must be <= {MAX_SEED}" in line
    assert not (tmp_path / "runs").exists()


def test_seed_bounds_are_exact_at_the_edge(tmp_path):
    raw = to_dict(tiny_config(tmp_path / "runs"))
    assert from_dict({**raw, "train": {**raw["train"], "seed": MAX_SEED}}).train.seed == MAX_SEED
    # as floats, 2**63 - 1 and 2**63 are one number: the check must compare the integers
    with pytest.raises(ConfigError, match=f"train.seed = {2**63}: must be <= {MAX_SEED}"):
        from_dict({**raw, "train": {**raw["train"], "seed": 2**63}})
    with pytest.raises(ConfigError, match="train.seed = -1: must be >= 0"):
        from_dict({**raw, "train": {**raw["train"], "seed": -1}})


def test_the_largest_seed_seeds_torch_and_numpy():
    import numpy as np
    import torch

    from debiaspl.data.loaders import derive_seed

    torch.manual_seed(MAX_SEED)
    torch.Generator().manual_seed(derive_seed(MAX_SEED, 1, 2))
    np.random.default_rng(MAX_SEED)
    torch.manual_seed(0)  # leave the global RNG as other tests expect it


# 3. a damaged run folder ------------------------------------------------------------------------

def test_report_names_a_results_file_that_is_not_json(finished_run, tmp_path):
    folder = damaged_copy(finished_run, tmp_path)
    (folder / "results.json").write_text("{garbage")
    line = one_error_line(debiaspl("report", folder, "--out", tmp_path / "report", cwd=tmp_path))
    assert f"{folder / 'results.json'}: not valid JSON" in line
    assert not (tmp_path / "report").exists()


def test_report_names_a_results_file_that_is_not_a_mapping(finished_run, tmp_path):
    folder = damaged_copy(finished_run, tmp_path)
    (folder / "results.json").write_text("[1, 2]")
    line = one_error_line(debiaspl("report", folder, "--out", tmp_path / "report", cwd=tmp_path))
    assert f"{folder / 'results.json'} does not hold a mapping" in line and "list" in line


@pytest.mark.parametrize("verb", ["report", "train --resume"])
def test_a_bad_value_in_a_run_folders_config_names_the_file_and_key(finished_run, tmp_path, verb):
    folder = damaged_copy(finished_run, tmp_path)
    config = folder / "config.yaml"
    config.write_text(config.read_text().replace("  seed: 0\n", "  seed: 'x'\n"))
    args = ["report", folder, "--out", tmp_path / "report"] if verb == "report" else ["train", "--resume", folder]
    line = one_error_line(debiaspl(*args, cwd=tmp_path))
    assert "config.yaml: train.seed = 'x': must be a whole number" in line
    assert not (tmp_path / "report").exists()


# 4. command lines argparse answered with its usage block ----------------------------------------

@pytest.mark.parametrize("step", ["0", "-3"])
def test_until_step_below_one_is_one_line(tmp_path, step):
    path = tmp_path / "tiny.yaml"
    path.write_text(experiment_text(tmp_path))
    line = one_error_line(debiaspl("train", path, f"--until-step={step}", cwd=tmp_path))
    assert f"--until-step {step}: must be a positive step" in line
    assert not (tmp_path / "runs").exists()


def test_resume_with_an_experiment_file_says_what_to_run(finished_run, tmp_path):
    folder = damaged_copy(finished_run, tmp_path)
    path = tmp_path / "tiny.yaml"
    save_config(tiny_config(tmp_path / "runs"), path)
    line = one_error_line(debiaspl("train", path, "--resume", folder, cwd=tmp_path))
    assert "--resume takes a run folder and no experiment file" in line
    assert f"`debiaspl train --resume {folder}`" in line and f"`debiaspl train {path}` alone" in line


def test_train_with_nothing_to_train_is_one_line(tmp_path):
    line = one_error_line(debiaspl("train", cwd=tmp_path))
    assert "debiaspl train EXPERIMENT.yaml" in line and "--resume RUN_DIR" in line
