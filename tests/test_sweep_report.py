"""`debiaspl sweep` (grids of runs, skipped when finished, resumed when stopped) and `debiaspl report`."""

import csv
import json
import math
from pathlib import Path

import pytest

from conftest import run_cli as debiaspl
from debiaspl.analysis.report import (at_best_top1, find_run_folders, group_rows, load_run_record, mean_and_std, median_of_last,
                                      read_evaluations, write_report)
from debiaspl.engine.run import run_state
from debiaspl.engine.sweep import parse_grid_axis, parse_seeds, sweep_configs
from debiaspl.errors import UserError

TINY_EXPERIMENT = """
data: {dataset: digits, num_labeled_head: 20, labeled_imbalance: 5, num_unlabeled_head: 40, unlabeled_imbalance: 5,
       num_workers: 0}
model: {name: small_cnn}
train: {steps: 6, batch_size: 8, unlabeled_ratio: 2, device: cpu}
algorithm: {marginal_momentum: 0.9, fixmatch: {threshold: 0.5}}
eval: {interval: 2, batch_size: 128}
logging: {run_dir: RUN_DIR, log_interval: 2, checkpoint_interval: 2, progress_bar: false}
"""


@pytest.fixture
def experiment(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text(TINY_EXPERIMENT.replace("RUN_DIR", str(tmp_path / "runs")))
    return path


def test_grid_axis_and_seeds_parse():
    assert parse_grid_axis("algorithm.name=fixmatch,debiaspl").values == ("fixmatch", "debiaspl")
    assert parse_grid_axis("a.b=[1,2],[3, 4]").values == ("[1,2]", "[3, 4]")
    assert parse_seeds("0,1,2") == (0, 1, 2) and parse_seeds("3-5") == (3, 4, 5) and parse_seeds("7") == (7,)
    for bad in ("", "a", "1,1", "-1", "2-x", "0,3-1"):
        with pytest.raises(UserError, match="--seeds"):
            parse_seeds(bad)
    for bad in ("algorithm.name", "algorithm.name=", "algorithm.name=a,,b", "algorithm.name=a,a"):
        with pytest.raises(UserError):
            parse_grid_axis(bad)


def test_sweep_configs_are_seed_major_with_folders_per_point(experiment, tmp_path):
    axes = [parse_grid_axis("algorithm.name=fixmatch,fixmatch+debiaspl"), parse_grid_axis("algorithm.debiaspl.tau=0.4,1")]
    configs, notes = sweep_configs(experiment, ["train.steps=4"], axes, seeds=(0, 1))
    names = [c.logging.run_name for c in configs]
    # FixMatch has no tau: its second tau value would train the same run again, so it is left out
    assert names == ["fixmatch-seed0", "fixmatch+debiaspl-tau=0.4-seed0", "fixmatch+debiaspl-tau=1-seed0",
                     "fixmatch-seed1", "fixmatch+debiaspl-tau=0.4-seed1", "fixmatch+debiaspl-tau=1-seed1"]
    assert notes == [f"fixmatch-tau=1-seed{s} would train the same run as fixmatch-seed{s} (algorithm.debiaspl.tau=1 "
                     f"does not apply to algorithm.name = fixmatch); left out" for s in (0, 1)]
    assert {c.logging.run_dir for c in configs} == {str(tmp_path / "runs" / "grid")}
    assert [c.train.seed for c in configs] == [0] * 3 + [1] * 3
    assert configs[2].algorithm.layer.tau == 1.0 and configs[2].algorithm.name == "fixmatch+debiaspl"
    assert all(c.train.steps == 4 for c in configs)
    # the same value written twice would train one run twice
    configs, notes = sweep_configs(experiment, [], [parse_grid_axis("algorithm.debiaspl.tau=0.4,0.40")], None)
    assert len(configs) == 1 and "tau=0.40-seed0 would train the same run as tau=0.4-seed0" in notes[0]
    # two values that make one folder name
    with pytest.raises(UserError, match="run folder name 'label_file=a_b.csv-seed0'"):
        sweep_configs(experiment, [], [parse_grid_axis("data.label_file=a/b.csv,a b.csv")], None)
    # a bad grid value is a config error naming the key, before anything trains
    with pytest.raises(UserError, match="algorithm.name"):
        sweep_configs(experiment, [], [parse_grid_axis("algorithm.name=fixmatch,fixmtch")], None)
    with pytest.raises(UserError, match="--seeds"):
        sweep_configs(experiment, [], [parse_grid_axis("train.seed=1,2")], None)


def test_q_hat_momentum_splits_runs_only_where_the_algorithm_trains_on_q_hat(experiment):
    axes = [parse_grid_axis("algorithm.name=fixmatch,fixmatch+debiaspl"),
            parse_grid_axis("algorithm.marginal_momentum=0.9,0.99")]
    configs, notes = sweep_configs(experiment, [], axes, None)
    # plain FixMatch only watches q_hat: its two momenta train the same weights
    assert [c.logging.run_name for c in configs] == [
        "fixmatch-marginal_momentum=0.9-seed0", "fixmatch+debiaspl-marginal_momentum=0.9-seed0",
        "fixmatch+debiaspl-marginal_momentum=0.99-seed0"]
    assert notes == ["fixmatch-marginal_momentum=0.99-seed0 would train the same run as "
                     "fixmatch-marginal_momentum=0.9-seed0; left out"]


def test_sweep_trains_skips_finished_and_resumes_stopped_runs_then_reports(experiment, tmp_path):
    args = ["sweep", experiment, "--seeds", "0,1", "--set-grid", "algorithm.name=fixmatch,fixmatch+debiaspl"]
    paused = debiaspl(*args, "--until-step", 2)
    assert paused.returncode == 0, paused.stderr
    parent = tmp_path / "runs" / "grid"
    listing = debiaspl(*args, "--dry-run")
    assert listing.stdout.count("stopped at step 2 of 6") == 4, listing.stdout
    finished = debiaspl(*args)
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.count("resuming from step 2 of 6") == 4
    again = debiaspl(*args)
    assert again.stdout.count("already finished at step 6") == 4 and "debiaspl report" in again.stdout
    assert sorted(p.name for p in parent.iterdir()) == ["fixmatch+debiaspl-seed0", "fixmatch+debiaspl-seed1",
                                                        "fixmatch-seed0", "fixmatch-seed1"]

    report = debiaspl("report", parent)
    assert report.returncode == 0, report.stderr
    assert "| - | fixmatch+debiaspl | 0 1 |" in report.stdout and "| - | fixmatch | 0 1 |" in report.stdout
    out = parent / "report"
    assert (out / "curves.png").stat().st_size > 0 and (out / "report.md").read_text() in report.stdout
    with open(out / "runs.csv", newline="") as handle:
        runs = list(csv.DictReader(handle))
    assert len(runs) == 4 and {row["seed"] for row in runs} == {"0", "1"}
    with open(out / "report.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["algorithm"], r["statistic"]) for r in rows] == [
        ("fixmatch", "final"), ("fixmatch+debiaspl", "final"), ("fixmatch", "median_last"),
        ("fixmatch+debiaspl", "median_last"), ("fixmatch", "best"), ("fixmatch+debiaspl", "best")]
    # the table is the mean over the two seeds of each run's own final result
    finals = [json.loads((parent / f"fixmatch+debiaspl-seed{s}" / "results.json").read_text())["top1"] for s in (0, 1)]
    assert float(rows[1]["top1_mean"]) == pytest.approx(sum(finals) / 2, rel=1e-5)
    assert 0 <= float(rows[1]["pseudo_kl_to_true_mean"]) < 10
    # the report folder holds no config, so reporting again finds the same four runs
    assert len(find_run_folders([parent])) == 4


def test_sweep_mistakes_are_one_line(experiment):
    proc = debiaspl("sweep", experiment, "--set-grid", "algorithm.debiaspl.tua=1,2")
    assert proc.returncode == 2 and "algorithm.debiaspl.tau" in proc.stderr and "Traceback" not in proc.stderr
    proc = debiaspl("report", experiment.parent / "nothing")
    assert proc.returncode == 2 and "no such folder" in proc.stderr
    proc = debiaspl("report", experiment.parent)
    assert proc.returncode == 2 and "no finished run" in proc.stderr


def fake_run(folder, algorithm, seed, top1s, tau=0.4, unlabeled_imbalance=100, finished=True, legacy=False, extra=""):
    """A run folder as train_run leaves it, with evaluations of the given top-1 at steps 10, 20, ...

    legacy: config.yaml in the layout of checkpoint format 1 (a flat algorithm section; name debiaspl).
    """
    folder.mkdir(parents=True)
    if legacy:
        section = f"{{name: {algorithm.replace('fixmatch+', '')}, tau: {tau}}}"
    else:
        section = f"{{name: {algorithm}, debiaspl: {{tau: {tau}}}}}" if "debiaspl" in algorithm else f"{{name: {algorithm}}}"
    (folder / "config.yaml").write_text(
        f"data: {{unlabeled_imbalance: {unlabeled_imbalance}}}\nalgorithm: {section}\n"
        f"train: {{seed: {seed}, device: cpu}}\nlogging: {{run_name: {folder.name}}}\n{extra}")
    lines = [json.dumps({"step": 10 * (i + 1), "eval/top1": top1, "eval/pseudo_kl_to_true": 0.1 * i})
             for i, top1 in enumerate(top1s)]
    lines.insert(1, json.dumps({"step": 15, "train/loss": 1.0}))  # training lines are not evaluations
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if finished:
        (folder / "results.json").write_text(json.dumps({"top1": top1s[-1], "acc_few": None}))


def test_rows_group_by_config_without_seed_and_name_what_varies(tmp_path):
    fake_run(tmp_path / "a", "fixmatch", 0, [0.1, 0.5])
    fake_run(tmp_path / "b", "fixmatch", 1, [0.2, 0.7], tau=2.0, legacy=True)  # its unused tau is dropped
    fake_run(tmp_path / "c", "fixmatch+debiaspl", 0, [0.3, 0.6], tau=0.4)
    fake_run(tmp_path / "d", "fixmatch+debiaspl", 0, [0.3, 0.6], tau=2.0, legacy=True)
    fake_run(tmp_path / "e", "fixmatch+debiaspl", 0, [0.3, 0.6], tau=0.4, unlabeled_imbalance=1)
    fake_run(tmp_path / "f", "fixmatch+debiaspl", 1, [0.3], finished=False)
    records = [load_run_record(folder) for folder in find_run_folders([tmp_path])]
    assert records[-1] is None  # not finished
    rows = group_rows([r for r in records if r is not None])
    assert [(row.setting, row.algorithm, len(row.runs)) for row in rows] == [
        ("data.unlabeled_imbalance=1", "fixmatch+debiaspl debiaspl.tau=0.4", 1),
        ("data.unlabeled_imbalance=100", "fixmatch", 2),
        ("data.unlabeled_imbalance=100", "fixmatch+debiaspl debiaspl.tau=0.4", 1),
        ("data.unlabeled_imbalance=100", "fixmatch+debiaspl debiaspl.tau=2", 1)]


def test_rows_of_runs_under_protocols_are_named_by_the_protocol(tmp_path):
    usb = "protocol: usb\noptim: {schedule: constant}\nmodel: {wrn_variant: usb}\neval: {interval: 1024}\n"
    daso = "protocol: daso\noptim: {schedule: constant, decay_norm_and_bias: true}\nmodel: {wrn_variant: daso}\n"
    fake_run(tmp_path / "a", "fixmatch", 0, [0.5], extra=usb)
    fake_run(tmp_path / "b", "fixmatch", 1, [0.5], extra=usb)
    fake_run(tmp_path / "c", "fixmatch", 0, [0.5], extra=daso + "eval: {interval: 500}\n")
    fake_run(tmp_path / "d", "fixmatch", 0, [0.5], extra=daso + "eval: {interval: 100}\n")
    rows = group_rows([load_run_record(folder) for folder in find_run_folders([tmp_path])])
    # the keys each protocol fixes collapse into its name; eval.interval varies within daso, so it stays
    assert [(row.setting, len(row.runs)) for row in rows] == [
        ("protocol=daso, eval.interval=100", 1), ("protocol=daso, eval.interval=500", 1),
        ("protocol=usb, eval.interval=1024", 2)]


def test_statistics(tmp_path):
    assert mean_and_std([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)))
    mean, std = mean_and_std([4.0, math.nan])
    assert mean == 4.0 and math.isnan(std)
    fake_run(tmp_path / "r", "fixmatch", 0, [0.9, 0.1, 0.2, 0.4, 0.3])
    evaluations = read_evaluations(tmp_path / "r" / "metrics.jsonl")
    assert [e["step"] for e in evaluations] == [10, 20, 30, 40, 50]
    assert median_of_last(evaluations, "top1", 3) == 0.3 and median_of_last(evaluations, "top1", 20) == 0.3
    assert median_of_last(evaluations, "top1", 2) == pytest.approx(0.35)
    markdown, _ = write_report([tmp_path], None, last=2)
    assert "| - | fixmatch | 0 | 30.00 | - |" in markdown  # one seed: no std; a null result: a dash
    assert "Median of the last 2 evaluations" in markdown and "35.00" in markdown
    assert at_best_top1(evaluations, "top1") == 0.9 and at_best_top1(evaluations, "step") == 10
    assert "best-so-far" in markdown and "| - | fixmatch | 0 | 90.00 | - |" in markdown
    with pytest.raises(UserError, match="--last"):
        write_report([tmp_path], None, last=0)


def test_a_finished_run_without_its_checkpoint_stays_finished(experiment):
    from debiaspl.engine.run import train_run
    config = sweep_configs(experiment, [], [], None)[0][0]
    assert run_state(config) == "not started"
    first = train_run(config)
    folder = Path(config.logging.run_dir) / config.logging.run_name
    (folder / "checkpoint.pt").unlink()  # deleted to save space
    assert run_state(config) == "finished"
    assert train_run(config) == json.loads((folder / "results.json").read_text()) and first["step"] == 6
    changed = sweep_configs(experiment, ["algorithm.debiaspl.tau=2"], [], None)[0][0]
    with pytest.raises(UserError, match="algorithm.debiaspl.tau: 0.4 -> 2"):  # checked against the saved config.yaml
        train_run(changed)


def test_report_reads_past_a_half_written_line_and_refuses_a_non_run(tmp_path):
    fake_run(tmp_path / "r", "fixmatch", 0, [0.5, 0.6])
    with open(tmp_path / "r" / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 30, "eval/to')
    assert [e["step"] for e in read_evaluations(tmp_path / "r" / "metrics.jsonl")] == [10, 20]
    markdown, _ = write_report([tmp_path], None)
    assert "fewer than 20 evaluations (the fewest: 2" in markdown
    (tmp_path / "r" / "config.yaml").write_text("just text\n")
    with pytest.raises(UserError, match="does not hold a mapping"):
        write_report([tmp_path], None)


def test_a_key_an_older_run_did_not_write_counts_as_its_default(tmp_path):
    fake_run(tmp_path / "a", "fixmatch", 0, [0.5])  # optim.lr absent: the default 0.03
    fake_run(tmp_path / "b", "fixmatch", 1, [0.5], extra="optim: {lr: 0.01}\n")
    fake_run(tmp_path / "c", "fixmatch", 2, [0.5], extra="optim: {lr: 0.03}\n")
    rows = group_rows([load_run_record(folder) for folder in find_run_folders([tmp_path])])
    assert [(row.setting, sorted(r.seed for r in row.runs)) for row in rows] == [
        ("optim.lr=0.01", [1]), ("optim.lr=0.03", [0, 2])]


def test_image_folders_are_part_of_what_a_run_learns_other_roots_are_not():
    from debiaspl.config import training_settings
    folder = {"data.dataset": "imagefolder", "data.root": "/data/cats_dogs", "train.steps": 4}
    assert training_settings(folder) != training_settings({**folder, "data.root": "/data/planes_cars"})
    cifar = {"data.dataset": "cifar10", "data.root": "/copy/one", "train.steps": 4}
    assert training_settings(cifar) == training_settings({**cifar, "data.root": "/copy/two"})


def test_a_finished_run_asked_for_with_another_evaluation_is_refused(tmp_path):
    from conftest import tiny_config
    from debiaspl.config import replace_dotted
    from debiaspl.engine.run import train_run
    config = tiny_config(tmp_path / "runs", train={"steps": 2}, eval={"interval": 2})
    train_run(config)
    assert train_run(config)["step"] == 2  # the same settings: its results
    for key, value in (("eval.use_ema", False), ("eval.interval", 1)):
        with pytest.raises(UserError, match=rf"holds a finished run with other settings \({key}: "):
            train_run(replace_dotted(config, key, value))
    paused = tiny_config(tmp_path / "runs", train={"steps": 4}, eval={"interval": 2}, logging={"run_name": "paused"})
    train_run(paused, until_step=2)
    assert train_run(replace_dotted(paused, "eval.interval", 4))["step"] == 4  # an unfinished run may change it
