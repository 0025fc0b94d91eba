"""The table a paper would print, from run folders: setting x algorithm, mean +/- std over seeds.

Runs are grouped by their saved config: two runs share a row when their configs differ only in
train.seed and in keys that do not change what is learned (logging, hooks, device, loader
processes). What varies between rows names them: `algorithm.*` keys form the algorithm column,
the rest the setting column. A FixMatch run has no DebiasPL section and uses q_hat only for
monitoring, so neither tau nor q_hat's momentum splits FixMatch rows.

Three statistics per run, all reported: the final evaluation of the EMA model (results.json), the
median of the last `last` evaluations (metrics.jsonl), as FixMatch and DASO report it, and the
evaluation with the best test top-1, as USB reports it (best-so-far: chosen on the test set, so it
is optimistic by construction; the tables say so).
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from debiaspl.metrics.plots import learning_curves_figure, save_figure
from debiaspl.files import write_csv, write_text
from debiaspl.config import flatten, load_saved_config, to_dict, training_settings
from debiaspl.config.loader import read_yaml
from debiaspl.errors import UserError
from debiaspl.run_folder import CONFIG_NAME, METRICS_NAME, RESULTS_NAME

METRICS = ("top1", "balanced_acc", "acc_many", "acc_medium", "acc_few", "pseudo_kl_to_true")
METRIC_HEADERS = {"top1": "top-1", "balanced_acc": "balanced", "acc_many": "many", "acc_medium": "medium",
                  "acc_few": "few", "pseudo_kl_to_true": "pseudo-label KL"}
STATISTICS = ("final", "median_last", "best")


@dataclass
class RunRecord:
    folder: Path
    algorithm: str
    seed: int
    protocol: str                          # the config's `protocol` (none when it names none)
    setting_keys: dict[str, object]        # config.training_settings without train.seed
    final: dict[str, float]                # the final EMA evaluation
    evaluations: list[dict]                # metrics.jsonl evaluation lines, by step


@dataclass
class Row:
    setting: str
    algorithm: str
    runs: list[RunRecord] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.algorithm if self.setting == "-" else f"{self.setting} / {self.algorithm}"


def find_run_folders(paths: list[Path]) -> list[Path]:
    """Every folder at or under `paths` holding a saved config, sorted."""
    folders: set[Path] = set()
    for path in paths:
        if not path.is_dir():
            raise UserError(f"{path}: no such folder (give run folders or folders that hold them)")
        folders.update(config.parent for config in path.rglob(CONFIG_NAME))
    return sorted(folders)


def load_run_record(folder: Path) -> RunRecord | None:
    """The run's config, final results and evaluations; None when the run has not finished."""
    if not (folder / RESULTS_NAME).is_file():
        return None
    config_path, results_path = folder / CONFIG_NAME, folder / RESULTS_NAME
    config = read_yaml(config_path)  # a ConfigError naming the file (and a key given twice)
    if not isinstance(config, dict):
        raise UserError(f"{config_path} does not hold a mapping of config sections; is this a run folder?")
    # Validated as `train --resume` would, so a hand-edited value (train.seed: 'x') is named here
    # instead of failing below; rows group by that config, so a key an older version did not write
    # counts as its default, not as a key the run lacks (which would join it to any other value).
    validated = load_saved_config(config_path)
    try:
        final = json.loads(results_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{results_path}: cannot read it: {exc}") from None
    except ValueError as exc:
        raise UserError(f"{results_path}: not valid JSON ({exc}); it should hold the final metrics of the run") from None
    if not isinstance(final, dict):
        raise UserError(f"{results_path} does not hold a mapping of final metrics (it holds a "
                        f"{type(final).__name__}); is this a run folder?")
    keys = flatten(to_dict(validated))
    algorithm = keys.get("algorithm.name", "?")
    setting_keys = {key: value for key, value in training_settings(keys).items() if key != "train.seed"}
    return RunRecord(folder=folder, algorithm=str(algorithm), seed=int(keys.get("train.seed", 0)),
                     protocol=str(keys.get("protocol", "none")), setting_keys=setting_keys, final={m: _number(final.get(m)) for m in METRICS},
                     evaluations=read_evaluations(folder / METRICS_NAME))


def read_evaluations(path: Path) -> list[dict]:
    """[{"step": s, metric: value, ...}] from the eval/ entries of metrics.jsonl, one per step, sorted."""
    by_step: dict[int, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:  # a line half-written by a crash
                continue
            if isinstance(entry, dict) and "eval/top1" in entry and "step" in entry:
                by_step[entry["step"]] = {"step": entry["step"],
                                          **{m: _number(entry.get(f"eval/{m}")) for m in METRICS}}
    return [by_step[step] for step in sorted(by_step)]


def median_of_last(evaluations: list[dict], metric: str, last: int) -> float:
    values = [e[metric] for e in evaluations[-last:] if not math.isnan(e[metric])]
    return statistics.median(values) if values else math.nan


def group_rows(records: list[RunRecord]) -> list[Row]:
    """Rows of runs that differ only in their seed, named by the keys that differ between rows."""
    all_keys = sorted({key for record in records for key in record.setting_keys})
    # A key varies when the runs that use it disagree (FixMatch runs have no algorithm.debiaspl.tau, say).
    varying = [key for key in all_keys if key != "algorithm.name"
               and len({repr(record.setting_keys[key]) for record in records if key in record.setting_keys}) > 1]
    # Keys that a protocol sets vary with it: name the protocol instead of listing them all.
    protocols = {record.protocol for record in records}
    by_protocol = [key for key in varying if len(protocols) > 1 and all(
        len({repr(r.setting_keys.get(key)) for r in records if r.protocol == protocol}) == 1 for protocol in protocols)]
    varying = [key for key in varying if key not in by_protocol]
    rows: dict[tuple[str, str], Row] = {}
    for record in records:
        setting = ", ".join([*([f"protocol={record.protocol}"] if by_protocol else []),
                             *(f"{key}={_value_text(record.setting_keys[key])}" for key in varying
                               if not key.startswith("algorithm.") and key in record.setting_keys)]) or "-"
        algorithm = " ".join([record.algorithm, *(f"{key.partition('.')[2]}={_value_text(record.setting_keys[key])}"
                                                   for key in varying if key.startswith("algorithm.")
                                                   and key in record.setting_keys)])
        rows.setdefault((setting, algorithm), Row(setting, algorithm)).runs.append(record)
    return [rows[key] for key in sorted(rows)]


def _value_text(value) -> str:
    """A setting's value in a row's name: a whole float as the integer it is (imbalance 100, not 100.0)."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def at_best_top1(evaluations: list[dict], metric: str) -> float:
    """`metric` at the evaluation with the highest top-1 (the first of ties), as USB's best_eval_acc."""
    scored = [e for e in evaluations if not math.isnan(e["top1"])]
    return max(scored, key=lambda e: e["top1"])[metric] if scored else math.nan


def run_statistic(record: RunRecord, metric: str, statistic: str, last: int) -> float:
    if statistic == "final":
        return record.final[metric]
    if statistic == "best":
        return at_best_top1(record.evaluations, metric)
    return median_of_last(record.evaluations, metric, last)


def mean_and_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1) of the finite values; std nan below two values."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else math.nan


def summary_rows(rows: list[Row], last: int) -> list[dict]:
    """One dict per row and statistic: setting, algorithm, statistic, seeds, <metric>_mean, <metric>_std."""
    table = []
    for statistic in STATISTICS:
        for row in rows:
            entry = {"setting": row.setting, "algorithm": row.algorithm, "statistic": statistic,
                     "seeds": " ".join(str(record.seed) for record in sorted(row.runs, key=lambda r: r.seed))}
            for metric in METRICS:
                entry[f"{metric}_mean"], entry[f"{metric}_std"] = mean_and_std(
                    [run_statistic(record, metric, statistic, last) for record in row.runs])
            table.append(entry)
    return table


def report_notes(rows: list[Row], last: int, skipped: list[Path]) -> list[str]:
    """What a reader of the tables should know about the runs behind them."""
    notes = []
    for row in rows:
        seeds = [record.seed for record in row.runs]
        repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
        if repeated:
            notes.append(f"{row.label}: seed {', '.join(map(str, repeated))} appears in more than one run "
                         f"(the same run trained twice?); each counts in the mean and std")
    fewest = min((record for row in rows for record in row.runs), key=lambda record: len(record.evaluations))
    if len(fewest.evaluations) < last:
        notes.append(f"some runs have fewer than {last} evaluations (the fewest: {len(fewest.evaluations)}, "
                     f"{fewest.folder}); their median takes all they have")
    if skipped:
        notes.append("not finished, left out: " + ", ".join(str(folder) for folder in skipped))
    return notes


def markdown_report(table: list[dict], last: int, notes: list[str]) -> str:
    titles = {"final": "Final evaluation (of the EMA model, unless the run set eval.use_ema: false)",
              "median_last": f"Median of the last {last} evaluations (as FixMatch and DASO report)",
              "best": "At the evaluation with the best test top-1 (USB's best-so-far; chosen on the test set, so optimistic)"}
    lines = []
    for statistic in STATISTICS:
        lines += [f"### {titles[statistic]}", "",
                  "| setting | algorithm | seeds | " + " | ".join(METRIC_HEADERS[m] for m in METRICS) + " |",
                  "|---|---|---|" + "---|" * len(METRICS)]
        for entry in (e for e in table if e["statistic"] == statistic):
            cells = [_mean_std(entry[f"{m}_mean"], entry[f"{m}_std"], m) for m in METRICS]
            lines.append(f"| {entry['setting']} | {entry['algorithm']} | {entry['seeds']} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("Mean +/- sample standard deviation over seeds (a metric a run did not record is left out of its "
                 "mean; '-' where no run has it); accuracies in %; pseudo-label KL: KL(pseudo-label class "
                 "histogram || true class histogram) on the whole unlabeled set, in nats.")
    lines += [f"\nNote: {note}" for note in notes]
    return "\n".join(lines) + "\n"


def curve_panels(rows: list[Row]) -> dict[str, list[tuple[str, list[int], list[float], list[float]]]]:
    """For learning_curves_figure: test top-1 and pseudo-label KL, one (label, steps, mean, std) per row."""
    panels = {"top1": "test top-1 (EMA model)", "pseudo_kl_to_true": "pseudo-label KL to the true distribution"}
    return {title: [(f"{row.label} (n={len(row.runs)})", *_curve(row, metric)) for row in rows]
            for metric, title in panels.items()}


def write_report(paths: list[Path], out: Path | None, last: int = 20) -> tuple[str, Path]:
    """Read the runs under `paths`, write report.md, report.csv, runs.csv and curves.png; returns (markdown, out)."""
    if last < 1:
        raise UserError(f"--last {last}: must be at least 1")
    folders = find_run_folders(paths)
    records, skipped = [], []
    for folder in folders:
        record = load_run_record(folder)
        (records.append(record) if record is not None else skipped.append(folder))
    if not records:
        raise UserError(f"no finished run under {', '.join(map(str, paths))} (a finished run has {RESULTS_NAME})")
    out = out if out is not None else paths[0] / "report"
    rows = group_rows(records)
    table = summary_rows(rows, last)
    markdown = markdown_report(table, last, report_notes(rows, last, skipped))
    write_text(out / "report.md", markdown)
    write_csv(out / "report.csv", {key: [entry[key] for entry in table] for key in table[0]})
    per_run = [(row, record) for row in rows for record in row.runs]
    write_csv(out / "runs.csv", {
        "run": [str(record.folder) for _, record in per_run], "setting": [row.setting for row, _ in per_run],
        "algorithm": [row.algorithm for row, _ in per_run], "seed": [record.seed for _, record in per_run],
        **{f"{metric}_{statistic}": [run_statistic(record, metric, statistic, last) for _, record in per_run]
           for statistic in STATISTICS for metric in METRICS}})
    save_figure(learning_curves_figure(curve_panels(rows)), out / "curves.png")
    return markdown, out


def _curve(row: Row, metric: str) -> tuple[list[int], list[float], list[float]]:
    """Steps evaluated in every run of the row, with the mean and std over runs at each."""
    per_run = [{e["step"]: e[metric] for e in record.evaluations if not math.isnan(e[metric])} for record in row.runs]
    steps = sorted(set.intersection(*(set(values) for values in per_run))) if per_run else []
    pairs = [mean_and_std([values[step] for values in per_run]) for step in steps]
    return steps, [p[0] for p in pairs], [p[1] for p in pairs]


def _mean_std(mean: float, std: float, metric: str) -> str:
    if math.isnan(mean):
        return "-"
    scale, digits = (1, 3) if metric == "pseudo_kl_to_true" else (100, 2)
    text = f"{scale * mean:.{digits}f}"
    return text if math.isnan(std) else f"{text} ± {scale * std:.{digits}f}"


def _number(value) -> float:
    """JSON numbers as floats; null (a NaN when written) and missing keys as nan."""
    return float(value) if isinstance(value, (int, float)) else math.nan
