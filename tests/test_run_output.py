"""What a run shows a person: timestamped lines in a log file, sweep headers, and TensorBoard's Text and HParams tabs."""

import re
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator as TensorAccumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.util import tensor_util

from debiaspl.cli import main
from debiaspl.engine.progress import Progress, format_duration
from debiaspl.engine.run import run_folder, train_run
from tests.test_sweep_report import TINY_EXPERIMENT as SWEEP_EXPERIMENT

STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
TRAIN_LINE = re.compile(rf"^{STAMP}  step (\d+)/6  loss \d+\.\d{{3}}  mask [01]\.\d\d  lr \d\.\d+(e-\d+)?  "
                        rf"[\d.e+]+ steps/s  ETA (\d+[dhms]\d*[hms]?)( to step \d+)?$")
EVAL_LINE = re.compile(rf"^{STAMP}  step (\d+): top1 [01]\.\d{{4}}  balanced [01]\.\d{{4}}$")


def test_a_log_file_gets_a_timestamped_line_per_logging_interval(tiny, capsys):
    # stdout and stderr are not terminals here, as in a cluster job: lines, though progress_bar is on
    config = tiny(logging={"progress_bar": True})
    train_run(config, until_step=4)
    train_run(config)
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert [int(TRAIN_LINE.match(line)[1]) for line in lines if TRAIN_LINE.match(line)] == [2, 4, 6], captured.out
    assert [int(EVAL_LINE.match(line)[1]) for line in lines if EVAL_LINE.match(line)] == [3, 6]
    assert any(line.endswith("ETA 0s to step 4") for line in lines)  # the pause, before train.steps
    assert "step" not in captured.err  # no bar


def test_a_terminal_gets_the_bar_and_timestamped_evaluations(monkeypatch, capsys):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    progress = Progress(10, 0, 10, "run", bar=True)
    for _ in range(5):
        progress.advance()
    progress.log(5, {"train/loss": 0.5, "pseudo/mask_rate": 0.25, "train/lr": 0.03, "train/steps_per_second": 2.0})
    progress.evaluation(5, {"top1": 0.5, "balanced_acc": 0.25})
    progress.close()
    captured = capsys.readouterr()
    assert re.fullmatch(rf"{STAMP}  step 5: top1 0.5000  balanced 0.2500\n", captured.out)
    assert "loss=0.500" in captured.err and "5/10" in captured.err
    # logging.progress_bar: false on a terminal gives the lines; other processes than rank 0 print nothing
    Progress(10, 0, 10, "run", bar=False).log(5, {"train/loss": 0.5, "pseudo/mask_rate": 0.25, "train/lr": 0.03,
                                                 "train/steps_per_second": 2.0})
    silent = Progress(10, 0, 10, "run", bar=True, show=False)
    silent.advance()
    silent.evaluation(1, {"top1": 0.5, "balanced_acc": 0.25})
    captured = capsys.readouterr()
    assert re.fullmatch(rf"{STAMP}  step 5/10  loss 0.500  mask 0.25  lr 0.03  2 steps/s  ETA \d+s\n", captured.out)
    assert captured.err == ""
    assert [format_duration(s) for s in (3, 125, 84420, 200000, -1)] == ["3s", "2m05s", "23h27m", "2d07h", "0s"]


def test_with_only_stdout_redirected_the_bar_stays_and_the_log_gets_the_lines(monkeypatch, capsys):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # `debiaspl train x.yaml | tee log.txt`
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    progress = Progress(10, 0, 10, "run", bar=True)
    progress.advance()
    progress.log(1, {"train/loss": 0.5, "pseudo/mask_rate": 0.25, "train/lr": 0.03, "train/steps_per_second": 2.0})
    progress.close()
    captured = capsys.readouterr()
    assert re.fullmatch(rf"{STAMP}  step 1/10  loss 0.500  mask 0.25  lr 0.03  2 steps/s  ETA \d+s\n", captured.out)
    assert "loss=0.500" in captured.err and "1/10" in captured.err


# test_sweep_report's tiny experiment, 4 steps, with the default progress_bar
TINY_EXPERIMENT = SWEEP_EXPERIMENT.replace("steps: 6", "steps: 4").replace(", progress_bar: false", "")


def test_sweep_runs_are_announced_and_compare_in_hparams(tmp_path, capsys):
    experiment = tmp_path / "grid.yaml"
    experiment.write_text(TINY_EXPERIMENT.replace("RUN_DIR", str(tmp_path / "runs")))
    args = ["sweep", str(experiment), "--seeds", "3", "--set-grid", "algorithm.name=fixmatch,fixmatch+debiaspl",
            "--set-grid", "algorithm.debiaspl.tau=0.5"]
    parent = tmp_path / "runs" / "grid"
    headers = [f"== run 1/2: fixmatch-seed3 ({parent / 'fixmatch-seed3'})  [algorithm.name=fixmatch train.seed=3] ==",
               f"== run 2/2: fixmatch+debiaspl-tau=0.5-seed3 ({parent / 'fixmatch+debiaspl-tau=0.5-seed3'})  "
               f"[algorithm.name=fixmatch+debiaspl algorithm.debiaspl.tau=0.5 train.seed=3] =="]
    for extra, then in ((["--until-step", "2"], "labeled"), ([], "resuming from step 2 of 4"),
                        ([], "already finished at step 4")):
        assert main(args + extra) == 0
        lines = capsys.readouterr().out.splitlines()
        for header in headers:  # on a new run, a resumed and a finished one alike, before that run's output
            assert then in lines[lines.index(header) + 1], lines

    # HParams: each run's values, the same columns in every run, the grid's keys first, the final metrics
    runs = [parent / "fixmatch-seed3", parent / "fixmatch+debiaspl-tau=0.5-seed3"]
    events = [EventAccumulator(str(run)).Reload() for run in runs]
    starts = [hparams_metadata.parse_session_start_info_plugin_data(
        e.SummaryMetadata(hparams_metadata.SESSION_START_INFO_TAG).plugin_data.content).hparams for e in events]
    assert starts[0]["algorithm.name"].string_value == "fixmatch" and "algorithm.debiaspl.tau" not in starts[0]
    assert starts[1]["algorithm.debiaspl.tau"].number_value == 0.5 and starts[1]["train.seed"].number_value == 3
    assert starts[1]["optim.nesterov"].string_value == "true" and starts[1]["hooks"].string_value == "none"
    assert "logging.run_name" not in starts[1]  # the run's name names its row already
    experiments = [hparams_metadata.parse_experiment_plugin_data(
        e.SummaryMetadata(hparams_metadata.EXPERIMENT_TAG).plugin_data.content) for e in events]
    assert experiments[0] == experiments[1]
    columns = {info.name: info.differs for info in experiments[0].hparam_infos}
    assert {name for name, differs in columns.items() if differs} == {"algorithm.name", "algorithm.debiaspl.tau"}
    assert "algorithm.flexmatch.threshold" in columns and "train.seed" in columns
    metrics = [info.name.tag for info in experiments[0].metric_infos]
    assert metrics[:5] == ["eval/top1", "eval/balanced_acc", "eval/acc_many", "eval/acc_medium", "eval/acc_few"]
    assert all(tag in events[1].Tags()["scalars"] for tag in metrics)  # TensorBoard shows each one's last value
    for e in events:
        end = hparams_metadata.parse_session_end_info_plugin_data(
            e.SummaryMetadata(hparams_metadata.SESSION_END_INFO_TAG).plugin_data.content)
        assert end.status == 1  # STATUS_SUCCESS


def count_values(run_dir, tag):
    """How many summaries of `tag` the run folder's event files hold, as written (before any purge)."""
    return sum(value.tag == tag for path in run_dir.glob("events.out.tfevents.*")
               for event in LegacyEventFileLoader(str(path)).Load() for value in event.summary.value)


def test_config_text_and_hparams_are_written_once_across_resumes_and_restarts(tiny):
    config = tiny()
    run_dir = run_folder(config)
    train_run(config, until_step=2)
    for name in ("checkpoint.pt", "checkpoint.previous.pt"):  # as if killed before its first checkpoint
        (run_dir / name).unlink(missing_ok=True)
    train_run(config, until_step=4)  # starts again from step 0
    train_run(config)  # resumes from step 4
    events = TensorAccumulator(str(run_dir)).Reload()  # as TensorBoard reads them, purging what a restart replaces
    text = events.Tensors("config/resolved/text_summary")
    assert len(text) == 1 and len(events.Tensors("data/split/text_summary")) == 1  # the first start's are purged
    yaml_block = tensor_util.make_ndarray(text[0].tensor_proto).item().decode()
    assert "\n    algorithm:\n      name: fixmatch+debiaspl\n" in yaml_block  # indented: markdown shows it as code
    # the restart wrote its own session start (the first one's is purged with its step 0); the resume none
    assert count_values(run_dir, hparams_metadata.SESSION_START_INFO_TAG) == 2
    assert count_values(run_dir, hparams_metadata.EXPERIMENT_TAG) == 1
    assert count_values(run_dir, hparams_metadata.SESSION_END_INFO_TAG) == 1
    assert [e.step for e in events.Tensors("eval/top1")] == [3, 6]
