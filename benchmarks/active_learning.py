"""The classic active-learning experiment at small scale: grow the labeled set in rounds, compare strategies.

Each seed trains round 0 once on the long-tailed draw; then, for every strategy, each round selects k
more unlabeled images from the last run of that strategy, labels them by the hidden truth (an oracle
annotator) and trains a new run from scratch on the labeled set so far. Reports test accuracy against
the number of labels (mean over seeds, and each seed), how many picks came from each class, draws the
curve and keeps every round's pick gallery.

    python benchmarks/active_learning.py          # digits-LT, random vs least confidence, ~5 minutes on 2 CPU cores
    python benchmarks/active_learning.py experiments/cifar10lt_mini.yaml --set model.dropout=0.3 \\
        --strategies random,least_confidence,bald,ambiguity --rounds 2 --k 500 --steps 2048 --seeds 0,1 \\
        --out runs/active_learning_cifar10lt     # CIFAR-10-LT from the JPEG copy

bald needs MC Dropout (model.dropout > 0: give it to every strategy, so they train the same model);
ambiguity (cartography's variability of the pseudo-labels, a training-dynamics signal) turns on the
cartography hook of the unlabeled set when the experiment has none.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
from collections import Counter
from pathlib import Path

import numpy as np

from debiaspl.analysis.load_run import load_run
from debiaspl.analysis.select_run import select_samples
from debiaspl.config import HookConfig, load_experiment, replace_dotted
from debiaspl.engine.run import run_folder, train_run
from debiaspl.hooks.cartography import CartographyOptions
from debiaspl.metrics.plots import save_figure


def accuracy_curve_figure(curves: dict[str, dict[int, list[tuple[int, float]]]], metric: str, title: str):
    """Mean over seeds against the number of labels, with the seeds' range as error bars."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.5, 4.2))
    axes = figure.add_subplot()
    for name, by_seed in curves.items():
        points = np.array([[[n, value] for n, value in seed_points] for seed_points in by_seed.values()])  # [S, R, 2]
        labels, values = points[:, :, 0].mean(axis=0), points[:, :, 1]
        mean = values.mean(axis=0)
        axes.errorbar(labels, mean, yerr=[mean - values.min(axis=0), values.max(axis=0) - mean], marker="o",
                      capsize=3, label=name)
    axes.set_xlabel("labeled images")
    axes.set_ylabel(metric)
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    return figure


def with_cartography_of_the_pool(config, steps: int):
    if any(hook.name == "cartography" for hook in config.hooks):
        return config
    hook = HookConfig("cartography", CartographyOptions(labeled=False, figure_interval=steps))
    return dataclasses.replace(config, hooks=config.hooks + (hook,))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", type=Path, nargs="?", default=Path("experiments/quickstart_fixmatch.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--strategies", default="random,least_confidence")
    parser.add_argument("--rounds", type=int, default=4, help="selection rounds after the first training")
    parser.add_argument("--k", type=int, default=20, help="images labeled per round")
    parser.add_argument("--steps", type=int, default=1000, help="training steps of every round")
    parser.add_argument("--seeds", default="0", help="comma-separated training (and random-pick) seeds")
    parser.add_argument("--out", type=Path, default=Path("runs/active_learning"))
    parser.add_argument("--replot", action="store_true",
                        help="train nothing: redraw the curve and reprint the tables from --out's report.json")
    args = parser.parse_args()
    if args.replot:
        report = json.loads((args.out / "report.json").read_text())
        by_seed = {key: {name: {int(seed): [tuple(point) for point in points] for seed, points in seeds.items()}
                         for name, seeds in report[key].items()} for key in ("top1", "balanced_acc")}
        picked = {name: {int(seed): rounds for seed, rounds in seeds.items()}
                  for name, seeds in report["picked_per_class"].items()}
        args.experiment, args.overrides = report["experiment"], report["overrides"]
        args.steps, args.k = report["steps"], report["k"]
        write_report(args, report["seeds"], by_seed["top1"], by_seed["balanced_acc"], picked, report["class_names"])
        return

    strategies = args.strategies.split(",")
    seeds = [int(seed) for seed in args.seeds.split(",")]
    config = load_experiment(args.experiment, args.overrides)
    for key, value in (("train.steps", args.steps), ("logging.run_dir", str(args.out)),
                       ("eval.interval", args.steps), ("logging.checkpoint_interval", args.steps)):
        config = replace_dotted(config, key, value)
    if "ambiguity" in strategies:
        config = with_cartography_of_the_pool(config, args.steps)
    args.out.mkdir(parents=True, exist_ok=True)
    top1: dict[str, dict[int, list[tuple[int, float]]]] = {name: {} for name in strategies}
    balanced: dict[str, dict[int, list[tuple[int, float]]]] = {name: {} for name in strategies}
    picked_classes: dict[str, dict[int, list[dict[str, int]]]] = {name: {} for name in strategies}

    def train(run_name: str, labels_path: Path | None):
        round_config = replace_dotted(config, "logging.run_name", run_name)
        if labels_path is not None:
            round_config = replace_dotted(round_config, "data.label_file", str(labels_path))
        results = train_run(round_config)
        run = load_run(run_folder(round_config))
        return run, len(run.data.labeled.labels), results

    for seed in seeds:
        config = replace_dotted(config, "train.seed", seed)
        first_run, first_labels, first_results = train(f"seed{seed}/round0", None)
        print(f"seed {seed} round 0: {first_labels} labels, top1 {first_results['top1']:.4f}")
        for strategy in strategies:
            labels_path = args.out / f"seed{seed}" / f"{strategy}_labels.csv"
            labels_path.write_text("sample_id,label\n")
            run, num_labels, results = first_run, first_labels, first_results
            top1[strategy][seed] = [(num_labels, results["top1"])]
            balanced[strategy][seed] = [(num_labels, results["balanced_acc"])]
            picked_classes[strategy][seed] = []
            for round_index in range(1, args.rounds + 1):
                picked = select_samples(run, strategy, args.k, oracle=True, seed=1000 * seed + round_index,
                                        out=args.out / f"seed{seed}" / f"{strategy}_round{round_index}_picks.csv")
                with open(picked, newline="") as source, open(labels_path, "a", newline="") as target:
                    rows = list(csv.DictReader(source))
                    csv.writer(target).writerows([row["sample_id"], row["label"]] for row in rows)
                picked_classes[strategy][seed].append(dict(Counter(row["label"] for row in rows)))
                run, num_labels, results = train(f"seed{seed}/{strategy}_round{round_index}", labels_path)
                top1[strategy][seed].append((num_labels, results["top1"]))
                balanced[strategy][seed].append((num_labels, results["balanced_acc"]))
                print(f"seed {seed} {strategy} round {round_index}: {num_labels} labels, top1 {results['top1']:.4f}, "
                      f"balanced {results['balanced_acc']:.4f}")
        # after every seed (the dicts hold the finished ones), so a stopped invocation keeps what it finished
        write_report(args, seeds[:seeds.index(seed) + 1], top1, balanced, picked_classes, first_run.data.class_names)


def write_report(args, seeds: list[int], top1, balanced, picked_classes, class_names: list[str]) -> None:
    strategies = list(top1)
    report = {"experiment": str(args.experiment), "overrides": args.overrides, "steps": args.steps, "k": args.k,
              "seeds": seeds, "top1": top1, "balanced_acc": balanced, "picked_per_class": picked_classes,
              "class_names": class_names}
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    seed_list = ",".join(map(str, seeds))
    save_figure(accuracy_curve_figure(top1, "test top-1", f"active learning, {args.k} labels per round, "
                                      f"mean over seeds {seed_list} (bars: range)"),
                args.out / "accuracy_vs_labels.png")
    print(f"\ntest top-1, mean over seeds {seed_list} (each seed in brackets):")
    print("labels  " + "  ".join(f"{name:>26s}" for name in strategies))
    for round_index in range(len(top1[strategies[0]][seeds[0]])):
        cells = []
        for name in strategies:
            values = [top1[name][seed][round_index][1] for seed in seeds]
            cells.append(f"{np.mean(values):.4f} [{' '.join(f'{v:.3f}' for v in values)}]")
        print(f"{top1[strategies[0]][seeds[0]][round_index][0]:6d}  " + "  ".join(f"{cell:>26s}" for cell in cells))
    print("\npicks per class over all rounds and seeds (in class order):")
    for name in strategies:
        total = Counter()
        for rounds in picked_classes[name].values():
            for counts in rounds:
                total.update(counts)
        print(f"  {name:18s} " + " ".join(f"{cls[:5]}:{total.get(cls, 0)}" for cls in class_names))
    print(f"written to {args.out / 'report.json'} and {args.out / 'accuracy_vs_labels.png'}")


if __name__ == "__main__":
    main()
