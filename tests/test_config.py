import re
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
    with pytest.raises(ConfigError, match="model.name = 'wrn28'.*choose a built-in .*wrn28_2.*did you mean"):
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


# ---- --set on the hooks list: one entry by index or by name, adding, removing, replacing the list ----

HOOKED = "hooks:\n  - name: drift\n    interval: 100\n    figure_interval: 500\n  - name: cartography\n"


def test_set_changes_one_hook_by_index_or_by_name(tmp_path):
    path = write(tmp_path, "hooked.yaml", HOOKED)
    by_index, by_name = load_experiment(path, ["hooks.0.interval=7"]), load_experiment(path, ["hooks.drift.interval=7"])
    assert by_index == by_name
    assert [hook.name for hook in by_name.hooks] == ["drift", "cartography"]
    assert (by_name.hooks[0].options.interval, by_name.hooks[0].options.figure_interval) == (7, 500)  # the rest kept
    assert load_experiment(path, ["hooks.1.labeled=false"]).hooks[1].options.labeled is False
    assert load_experiment(path, ["hooks.cartography.labeled=false"]).hooks[1].options.labeled is False
    # code that changes a key of a validated config (run folders, sweeps) addresses hooks the same way
    assert replace_dotted(load_experiment(path), "hooks.drift.interval", 7) == by_name


def test_set_adds_replaces_and_removes_one_hook(tmp_path):
    from debiaspl.hooks.drift import DriftOptions
    from debiaspl.hooks.uncertainty import UncertaintyOptions
    path = write(tmp_path, "hooked.yaml", HOOKED)
    added = load_experiment(path, ["hooks.uncertainty={}", "hooks.uncertainty.interval=50"])
    assert [hook.name for hook in added.hooks] == ["drift", "cartography", "uncertainty"]
    assert added.hooks[2].options == UncertaintyOptions(interval=50)
    assert load_experiment(path, ["hooks.uncertainty={interval: 50}"]) == added
    # a mapping for a listed hook gives all its options, the ones it leaves out at their defaults
    assert load_experiment(path, ["hooks.drift={interval: 7}"]).hooks[0].options == DriftOptions(interval=7)
    assert load_experiment(path, ["hooks.0={name: uncertainty}"]).hooks[0].name == "uncertainty"
    assert [hook.name for hook in load_experiment(path, ["hooks.drift=null"]).hooks] == ["cartography"]
    assert load_experiment(path, ["hooks.0=null"]) == load_experiment(path, ["hooks.drift=null"])
    assert load_experiment(path, ["hooks.influence=null"]) == load_experiment(path)  # not listed: nothing to remove
    plain = write(tmp_path, "plain.yaml", "train:\n  steps: 10\n")  # no hooks: list
    assert [hook.name for hook in load_experiment(plain, ["hooks.drift={}"]).hooks] == ["drift"]


LISTED = "the list holds hooks.0 = drift, hooks.1 = cartography"


@pytest.mark.parametrize("override, message", [
    ("hooks.2.interval=50", f"--set hooks.2.interval=50: hooks has no entry 2; {LISTED} (to add a hook: "
     "--set hooks.NAME={}, NAME one of drift, cartography, uncertainty, influence)"),
    ("hooks.drfit.interval=50", "--set hooks.drfit.interval=50: 'drfit' is neither a hook nor an index into hooks "
     f"(did you mean drift?); hooks are drift, cartography, uncertainty, influence; {LISTED}"),
    ("hooks.-1.interval=50", "--set hooks.-1.interval=50: '-1' is neither a hook nor an index into hooks"),
    ("hooks.uncertainty.interval=50", f"--set hooks.uncertainty.interval=50: uncertainty is not in the hooks list "
     f"({LISTED}); to add it, put --set hooks.uncertainty={{}} (its defaults) before this --set"),
    ("hooks.drift=5", "--set hooks.drift=5: expected the options of drift as a mapping like {interval: 500}, {} for "
     "its defaults, or null to remove it"),
    ("hooks.drift={name: cartography}", "--set hooks.drift={name: cartography}: name 'cartography' inside the options "
     "of hooks.drift; leave it out (to add cartography: --set hooks.cartography={})"),
    ("hooks.drift.interval.every=5", "--set hooks.drift.interval.every=5: interval = 100 is not a section"),
    ("hooks.drift.interval=0", "hooked.yaml: hooks[0].interval = 0: must be >= 1"),
    ("hooks.drift.intervl=5", "hooked.yaml: unknown key hooks[0].intervl; did you mean hooks[0].interval?"),
])
def test_set_on_hooks_errors_name_the_key_and_the_hooks_listed(tmp_path, override, message):
    path = write(tmp_path, "hooked.yaml", HOOKED)
    with pytest.raises(ConfigError) as info:
        load_experiment(path, [override])
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_set_on_hooks_of_an_empty_or_doubled_list(tmp_path):
    plain = write(tmp_path, "plain.yaml", "")
    with pytest.raises(ConfigError, match=r"--set hooks.0.interval=5: hooks has no entry 0; the hooks list is empty"):
        load_experiment(plain, ["hooks.0.interval=5"])
    # the loader lists each hook once, so a name addresses one entry; a list that names one twice is refused,
    # and a --set by that name says which entries and how to address one
    doubled = write(tmp_path, "doubled.yaml", "hooks:\n  - name: drift\n  - name: drift\n    interval: 3\n")
    with pytest.raises(ConfigError, match=r"hooks\[1\].name = 'drift': each hook may be listed once"):
        load_experiment(doubled)
    with pytest.raises(ConfigError) as info:
        load_experiment(doubled, ["hooks.drift.interval=5"])
    assert str(info.value) == ("--set hooks.drift.interval=5: drift is listed 2 times in hooks (hooks.0, hooks.1) and "
                               "may be listed once; address one by its index, e.g. --set hooks.1=null removes the last")
    assert load_experiment(doubled, ["hooks.0=null", "hooks.drift.interval=5"]).hooks[0].options.interval == 5


def test_replacing_the_hooks_list_warns_of_the_hooks_it_drops(tmp_path, capsys):
    from debiaspl.engine.sweep import parse_grid_axis, sweep_configs
    path = write(tmp_path, "hooked.yaml", HOOKED)
    # still allowed: replacing the list is what was typed
    assert [hook.name for hook in load_experiment(path, ["hooks=[{name: drift, interval: 7}]"]).hooks] == ["drift"]
    assert capsys.readouterr().err.splitlines() == [
        f"debiaspl: warning: --set hooks=[{{name: drift, interval: 7}}] drops cartography (listed in {path}); to keep "
        f"them and change only what it gives: --set hooks.drift.interval=7"]
    # nothing dropped, or every hook turned off on purpose: no warning
    for override in ("hooks=[{name: cartography}, {name: drift}, {name: uncertainty}]", "hooks=[]", "hooks=null"):
        load_experiment(path, [override])
    assert capsys.readouterr().err == ""
    # a sweep loads its experiment once per grid point, and warns once
    axes = [parse_grid_axis("algorithm.name=fixmatch,fixmatch+debiaspl")]
    configs, _ = sweep_configs(path, ["hooks=[{name: uncertainty, interval: 5}]"], axes, None)
    assert len(configs) == 2 and all([hook.name for hook in c.hooks] == ["uncertainty"] for c in configs)
    assert capsys.readouterr().err.splitlines() == [
        f"debiaspl: warning: --set hooks=[{{name: uncertainty, interval: 5}}] drops drift, cartography (listed in "
        f"{path}); to keep them and change only what it gives: --set hooks.uncertainty={{}} --set "
        f"hooks.uncertainty.interval=5"]


def test_cli_set_on_hooks_is_one_error_line(tmp_path, capsys):
    from debiaspl.cli import main
    path = write(tmp_path, "hooked.yaml", HOOKED)
    assert main(["config", str(path), "--set", "hooks.uncertainty.interval=50"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("debiaspl: error: --set hooks.uncertainty.interval=50: uncertainty is not in the hooks "
                          f"list ({LISTED})") and err.count("\n") == 1
    assert main(["config", str(path), "--set", "hooks.drift.interval=7"]) == 0
    assert "interval: 7" in capsys.readouterr().out


def test_sweep_grid_over_a_hook_option(tmp_path):
    from debiaspl.engine.sweep import parse_grid_axis, sweep_configs
    path = write(tmp_path, "hooked.yaml", HOOKED)
    for key in ("hooks.drift.interval", "hooks.0.interval"):
        axes = [parse_grid_axis("algorithm.name=fixmatch,fixmatch+debiaspl"), parse_grid_axis(f"{key}=100,200")]
        configs, notes = sweep_configs(path, [], axes, None)
        # hooks never change what a run learns (they are execution settings), so the sweep trains each
        # algorithm once and says why it leaves out the second interval
        assert [(c.algorithm.name, c.hooks[0].options.interval) for c in configs] == [("fixmatch", 100),
                                                                                     ("fixmatch+debiaspl", 100)]
        assert [note.split(" ")[0] for note in notes] == ["fixmatch-interval=200-seed0", "fixmatch+debiaspl-interval=200-seed0"]
    with pytest.raises(ConfigError, match=r"hooks\[0\].interval = 0: must be >= 1"):  # checked before any run
        sweep_configs(path, [], [parse_grid_axis("hooks.drift.interval=100,0")], None)
    with pytest.raises(ConfigError, match="uncertainty is not in the hooks list"):
        sweep_configs(path, [], [parse_grid_axis("hooks.uncertainty.interval=1,2")], None)
    configs, _ = sweep_configs(path, ["hooks.uncertainty={}"], [parse_grid_axis("hooks.uncertainty.interval=1,2")], None)
    assert configs[0].hooks[2].options.interval == 1


def test_resume_with_set_on_a_hook_option(tiny, capsys):
    """A stopped run continues under another hook interval (hooks are execution settings), and its
    config.yaml records the new one; the one tiny run of this file (paused twice: no end-of-run figures)."""
    from debiaspl.cli import main
    from debiaspl.config import load_saved_config
    from debiaspl.engine.run import run_folder, train_run
    from debiaspl.run_folder import load_checkpoint
    config = from_dict({**to_dict(tiny(train={"steps": 4})), "hooks": [{"name": "drift", "interval": 2}]})
    train_run(config, until_step=1)
    run_dir = run_folder(config)
    assert main(["train", "--resume", str(run_dir), "--set", "hooks.drift.interval=1", "--until-step", "2"]) == 0
    assert load_checkpoint(run_dir / "checkpoint.pt")["step"] == 2
    assert load_saved_config(run_dir / "config.yaml").hooks[0].options.interval == 1
    # a training setting may not change on resume, also when it comes with a hook option
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir), "--set", "hooks.drift.interval=2", "--set", "train.steps=5"]) == 2
    assert "holds a run with other settings (train.steps: 4 -> 5)" in capsys.readouterr().err


def test_get_dotted_reads_hooks_as_set_dotted_addresses_them(tmp_path):
    from debiaspl.config import get_dotted
    raw = to_dict(load_experiment(write(tmp_path, "hooked.yaml", HOOKED)))
    assert get_dotted(raw, "hooks.drift.interval") == get_dotted(raw, "hooks.0.interval") == 100
    assert get_dotted(raw, "hooks.cartography.labeled") is True and get_dotted(raw, "train.steps") == 2 ** 18
    assert [get_dotted(raw, key, "-") for key in ("hooks.2.interval", "hooks.uncertainty.interval", "train.x")] == ["-"] * 3


def test_set_values_read_as_a_user_means_them(tmp_path):
    path = write(tmp_path, "e.yaml", "train:\n  steps: 2000\n  batch_size: 32\nlogging:\n  run_name: a\n")
    cfg = load_experiment(path, ["logging.run_name='my run'", "model.weights=''", "train.steps=010"])
    assert cfg.logging.run_name == "my run" and cfg.model.weights == "" and cfg.train.steps == 10  # not 8 (octal)
    assert load_experiment(path, ["logging.run_name=2024"]).logging.run_name == "2024"  # a string key keeps the text
    merged = load_experiment(path, ["train={steps: 4}"])  # a section merges, as a base: file's would
    assert (merged.train.steps, merged.train.batch_size) == (4, 32)


@pytest.mark.parametrize("text, message", [
    ("protocol: [usb]\n", "protocol = ['usb']: must be a string"),
    ("hooks:\n  - name: [drift]\n", "hooks[0].name = ['drift']: must be one of"),
    ("algorithm:\n  name: [fixmatch]\n", "algorithm.name = ['fixmatch']: must be a name, one of")])
def test_a_name_that_is_not_a_string_is_one_line(tmp_path, text, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_experiment(write(tmp_path, "e.yaml", text))
