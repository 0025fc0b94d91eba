"""The classic active-learning experiment at small scale: grow the labeled set in rounds, compare strategies.

Each round trains a run from scratch on the labeled set so far (the long-tailed draw plus every
image selected in earlier rounds, labeled by the hidden truth as an oracle annotator would), then
selects k more unlabeled images with each strategy. Reports test accuracy against the number of
labels and draws the curve.

    python benchmarks/active_learning.py          # digits-LT, random vs least confidence, ~5 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from debiaspl.analysis.load_run import load_run
from debiaspl.metrics.plots import save_figure
from debiaspl.analysis.select_run import select_samples
from debiaspl.config import load_experiment, replace_dotted
from debiaspl.engine.run import run_folder, train_run


def accuracy_curve_figure(curves: dict[str, list[tuple[int, float]]], metric: str, title: str):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot()
    for name, points in curves.items():
        axes.plot([n for n, _ in points], [value for _, value in points], marker="o", label=name)
    axes.set_xlabel("labeled images")
    axes.set_ylabel(metric)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    return figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", type=Path, nargs="?", default=Path("experiments/quickstart_fixmatch.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--strategies", default="random,least_confidence")
    parser.add_argument("--rounds", type=int, default=4, help="selection rounds after the first training")
    parser.add_argument("--k", type=int, default=20, help="images labeled per round")
    parser.add_argument("--steps", type=int, default=1000, help="training steps of every round")
    parser.add_argument("--out", type=Path, default=Path("runs/active_learning"))
    args = parser.parse_args()

    config = load_experiment(args.experiment, args.overrides)
    for key, value in (("train.steps", args.steps), ("logging.run_dir", str(args.out)),
                       ("eval.interval", args.steps), ("logging.checkpoint_interval", args.steps)):
        config = replace_dotted(config, key, value)
    args.out.mkdir(parents=True, exist_ok=True)
    curves: dict[str, list[tuple[int, float]]] = {}
    balanced: dict[str, list[tuple[int, float]]] = {}
    for strategy in args.strategies.split(","):
        labels_path = args.out / f"{strategy}_labels.csv"
        labels_path.write_text("sample_id,label\n")
        for round_index in range(args.rounds + 1):
            round_config = replace_dotted(config, "logging.run_name", f"{strategy}_round{round_index}")
            if round_index:
                round_config = replace_dotted(round_config, "data.label_file", str(labels_path))
            results = train_run(round_config)
            run = load_run(run_folder(round_config))
            num_labels = len(run.data.labeled.labels)
            curves.setdefault(strategy, []).append((num_labels, results["top1"]))
            balanced.setdefault(strategy, []).append((num_labels, results["balanced_acc"]))
            print(f"{strategy} round {round_index}: {num_labels} labels, top1 {results['top1']:.4f}, "
                  f"balanced {results['balanced_acc']:.4f}")
            if round_index == args.rounds:
                break
            picked = select_samples(run, strategy, args.k, oracle=True, seed=round_index,
                                    out=args.out / f"{strategy}_round{round_index}_selected.csv")
            with open(picked, newline="") as source, open(labels_path, "a", newline="") as target:
                writer = csv.writer(target)
                for row in csv.DictReader(source):
                    writer.writerow([row["sample_id"], row["label"]])
    report = {"experiment": str(args.experiment), "overrides": args.overrides, "steps": args.steps, "k": args.k,
              "top1": curves, "balanced_acc": balanced}
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    save_figure(accuracy_curve_figure(curves, "test top-1", f"active learning, {args.k} labels per round"),
                args.out / "accuracy_vs_labels.png")
    print("labels  " + "  ".join(f"{name:>18s}" for name in curves))
    for row in zip(*curves.values()):
        print(f"{row[0][0]:6d}  " + "  ".join(f"{value:18.4f}" for _, value in row))
    print(f"written to {args.out / 'report.json'} and {args.out / 'accuracy_vs_labels.png'}")


if __name__ == "__main__":
    main()
