import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from debiaspl.config import (ConfigError, ExperimentConfig, describe_fields, from_dict, load_experiment,
                             parse_override, replace_dotted, save_config, to_dict)
from debiaspl.data.datasets import DATASETS
from debiaspl.models import MODELS

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_defaults_are_the_paper_recipe():
    cfg = ExperimentConfig()
    assert cfg.algorithm.name == "fixmatch+debiaspl"
    assert (cfg.algorithm.layer.tau, cfg.algorithm.marginal_momentum, cfg.algorithm.base.threshold) == (0.4, 0.999, 0.95)
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.nesterov, cfg.optim.weight_decay) == (0.03, 0.9, True, 5e-4)
    assert (cfg.train.batch_size, cfg.train.unlabeled_ratio, cfg.train.steps) == (64, 2, 2 ** 18)


@pytest.mark.parametrize("text, message", [
    ("algorithm:\n  tua: 0.4\n", "unknown key algorithm.tua; did you mean algorithm.debiaspl.tau?"),
    ("algorithm:\n  tau: 0.4\n", "unknown key algorithm.tau; did you mean algorithm.debiaspl.tau?"),
    ("algorithm:\n  debiaspl:\n    tua: 0.4\n", "unknown key algorithm.debiaspl.tua; did you mean algorithm.debiaspl.tau?"),
    ("algorithm:\n  name: fixmatch\n  debiaspl:\n    tau: 0.4\n",
     "algorithm.debiaspl holds the options of debiaspl, which algorithm.name = fixmatch does not include"),
    ("algorithm:\n  flexmatch:\n    warmup: false\n", "algorithm.flexmatch holds the options of flexmatch, which "
     "algorithm.name = fixmatch+debiaspl does not include"),
    ("algorithm:\n  name: flexmatch\n  flexmatch:\n    warmup: 2\n", "algorithm.flexmatch.warmup = 2: must be true or false"),
    ("algorithm:\n  fixmatch: false\n", "algorithm.fixmatch must be a section (a mapping) of fixmatch's options"),
    ("algorithm:\n  name: debiaspl\n", "algorithm.name = 'debiaspl': debiaspl is a layer over a base algorithm: write "
     "fixmatch+debiaspl or flexmatch+debiaspl"),
    ("trian:\n  steps: 3\n", "unknown key trian; did you mean train?"),
    ("train:\n  steps: many\n", "train.steps = 'many': must be a whole number"),
    ("train:\n  steps: 1.5\n", "train.steps = 1.5: must be a whole number"),
    ("algorithm:\n  fixmatch:\n    threshold: 1.5\n", "algorithm.fixmatch.threshold = 1.5: must be <= 1"),
    ("algorithm:\n  marginal_momentum: 1\n", "algorithm.marginal_momentum = 1: must be < 1"),
    ("algorithm:\n  name: flexmatch+debiasPL\n", "algorithm.name = 'flexmatch+debiasPL': must be one of fixmatch, "
     "flexmatch, fixmatch+debiaspl, flexmatch+debiaspl (did you mean flexmatch+debiaspl?)"),
    ("optim:\n  nesterov: 1\n", "optim.nesterov = 1: must be true or false"),
    ("model: wrn28_2\n", "model must be a section"),
    ("data:\n  unlabeled_imbalance: 0.5\n", "data.unlabeled_imbalance = 0.5: must satisfy |gamma_u| >= 1"),
    ("- a\n- b\n", "expected a mapping"),
    ("train: [1\n", "not valid YAML"),
])
def test_bad_files_name_the_key_and_value(tmp_path, text, message):
    path = write(tmp_path, "bad.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_unreadable_file_is_a_config_error(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("train:\n  steps: 3  # caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="cannot read it as UTF-8"):
        load_experiment(path)


def test_float_fields_accept_exponent_spellings(tmp_path):
    # PyYAML reads 5e-4 (no dot) as a string; the schema knows it is a float.
    cfg = load_experiment(write(tmp_path, "e.yaml", "optim:\n  weight_decay: 5e-4\n  lr: 1\n"))
    assert cfg.optim.weight_decay == 5e-4 and isinstance(cfg.optim.lr, float)


def test_base_files_merge_and_overrides_win(tmp_path):
    write(tmp_path, "common.yaml", "train:\n  steps: 100\n  batch_size: 8\nalgorithm:\n  debiaspl:\n    tau: 0.5\n")
    child = write(tmp_path, "child.yaml", "base: common.yaml\ntrain:\n  steps: 200\n")
    cfg = load_experiment(child, ["algorithm.debiaspl.tau=0.25", "algorithm.name=flexmatch+debiaspl",
                                  "algorithm.flexmatch.warmup=false", "optim.nesterov=false"])
    assert (cfg.train.steps, cfg.train.batch_size) == (200, 8)
    assert (cfg.algorithm.layer.tau, cfg.algorithm.name, cfg.optim.nesterov) == (0.25, "flexmatch+debiaspl", False)
    assert (cfg.algorithm.base.warmup, cfg.algorithm.base.threshold) == (False, 0.95)
    # a layer's section may be emptied with null
    assert load_experiment(child, ["algorithm.name=fixmatch", "algorithm.debiaspl=null"]).algorithm.layer is None
    assert cfg.logging.run_name == "child"


def test_base_cycle_and_missing_base_are_reported(tmp_path):
    write(tmp_path, "a.yaml", "base: b.yaml\n")
    write(tmp_path, "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_experiment(tmp_path / "a.yaml")
    write(tmp_path, "c.yaml", "base: missing.yaml\n")
    with pytest.raises(ConfigError, match="missing.yaml.*named as base by"):
        load_experiment(tmp_path / "c.yaml")


def test_bad_overrides(tmp_path):
    path = write(tmp_path, "ok.yaml", "")
    with pytest.raises(ConfigError, match="unknown key train.stepz; did you mean train.steps"):
        load_experiment(path, ["train.stepz=3"])
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        load_experiment(path, ["train.steps"])
    assert parse_override("data.root=/x/y") == ("data.root", "/x/y")
    # string keys keep the text typed, even when YAML would read a number or a boolean
    cfg = load_experiment(path, ["logging.run_name=2024", "data.root=yes"])
    assert (cfg.logging.run_name, cfg.data.root) == ("2024", "yes")
    assert parse_override("train.steps=262144") == ("train.steps", 262144)


def test_save_load_round_trip(tmp_path):
    cfg = replace_dotted(ExperimentConfig(), "algorithm.debiaspl.tau", 0.7)
    save_config(cfg, tmp_path / "config.yaml")
    again = load_experiment(tmp_path / "config.yaml")
    assert to_dict(again) == {**to_dict(cfg), "logging": {**to_dict(cfg)["logging"], "run_name": "config"}}
    assert from_dict(to_dict(cfg)) == cfg


def test_choices_are_the_registries(monkeypatch):
    from debiaspl.algorithm import ALGORITHMS, LAYERS
    with pytest.raises(ConfigError, match="model.name = 'wrn28'.*must be one of .*wrn28_2.*did you mean"):
        from_dict({"model": {"name": "wrn28"}})
    with pytest.raises(ConfigError, match="data.dataset = 'cifar'"):
        from_dict({"data": {"dataset": "cifar"}})
    # a new registry entry is a valid value, with no other change
    monkeypatch.setitem(MODELS, "tiny_test_net", MODELS["small_cnn"])
    monkeypatch.setitem(DATASETS, "tiny_test_set", DATASETS["digits"])
    config = from_dict({"model": {"name": "tiny_test_net"}, "data": {"dataset": "tiny_test_set"}})
    assert (config.model.name, config.data.dataset) == ("tiny_test_net", "tiny_test_set")
    # every base and layer is documented in the reference, under its own section
    keys = {key for key, *_ in describe_fields()}
    assert {"algorithm.fixmatch.threshold", "algorithm.flexmatch.warmup", "algorithm.debiaspl.tau"} <= keys
    assert {key.split(".")[1] for key in keys if key.count(".") == 2 and key.startswith("algorithm.")} == \
        set(ALGORITHMS) | set(LAYERS)


def test_every_field_is_documented():
    rows = describe_fields()
    assert len(rows) > 30
    assert all(doc for _, _, _, doc in rows)


@pytest.mark.parametrize("path", sorted((REPO / "experiments").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_experiments_load(path):
    load_experiment(path)


def test_cli_exits_2_with_one_line(tmp_path):
    path = write(tmp_path, "bad.yaml", "algorithm:\n  debiaspl:\n    tua: 0.4\n")
    proc = subprocess.run([sys.executable, "-m", "debiaspl", "train", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"debiaspl: error: {path}: unknown key algorithm.debiaspl.tua; did you mean algorithm.debiaspl.tau?"]


def test_readme_config_reference_is_current(capsys):
    from debiaspl.cli import main
    assert main(["config", "--reference"]) == 0
    table = capsys.readouterr().out
    assert table in (REPO / "README.md").read_text(), "README config reference is stale: paste `debiaspl config --reference`"
