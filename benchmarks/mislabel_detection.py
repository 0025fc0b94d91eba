"""Can TracIn self-influence find mislabeled training images? A planted-mislabel experiment.

1. Train a clean run and find, for every class, the wrong class its test images are most confused
   with (the largest mean softmax probability among the wrong classes).
2. Flip a fraction of the labeled set to that class (a data.label_file), train again with weight
   snapshots and the online influence hook.
3. Rank the labeled images by offline TracIn (last layer, over the snapshots), by the online hook,
   by the loss of the final model, and at random; report precision and recall at k = #flipped.

    python benchmarks/mislabel_detection.py                      # digits-LT quickstart, ~2 minutes on 2 CPU cores
    python benchmarks/mislabel_detection.py experiments/cifar10lt_cpu_debiaspl.yaml \
        --set data.dataset=imagefolder --set data.root=../shared/data/cifar10-jpeg --steps 4096
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from debiaspl.inference import predict_logits
from debiaspl.metrics.influence import precision_recall_at_k
from debiaspl.analysis.influence_run import self_influence
from debiaspl.analysis.load_run import load_run
from debiaspl.config import HookConfig, load_experiment, replace_dotted
from debiaspl.engine.run import run_folder, train_run
from debiaspl.hooks import InfluenceHook


def most_confused_classes(run) -> list[int]:
    """For each class c: argmax over k != c of the mean softmax probability of class-c test images."""
    logits = predict_logits(run.model, run.data.test.images, run.mean, run.std, 256, run.device)
    probs, labels = torch.softmax(logits, dim=1), run.data.test.labels
    targets = []
    for cls in range(run.data.num_classes):
        mean = probs[labels == cls].mean(dim=0)
        mean[cls] = -1.0
        targets.append(int(mean.argmax()))
    return targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", type=Path, nargs="?", default=Path("experiments/quickstart.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--fraction", type=float, default=0.1, help="fraction of the labeled set to flip")
    parser.add_argument("--snapshots", type=int, default=10, help="TracIn checkpoints over the run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/mislabel_detection"))
    args = parser.parse_args()

    config = load_experiment(args.experiment, args.overrides)
    for key, value in (("train.steps", args.steps), ("logging.run_dir", str(args.out)),
                       ("logging.snapshot_interval", max(1, args.steps // args.snapshots)),
                       ("eval.interval", args.steps), ("logging.checkpoint_interval", args.steps)):
        config = replace_dotted(config, key, value)
    config = dataclasses.replace(config, hooks=(HookConfig("influence", InfluenceHook.Options()),))

    clean = replace_dotted(config, "logging.run_name", "clean")
    train_run(clean)
    clean_run = load_run(run_folder(clean))
    confused = most_confused_classes(clean_run)
    labeled = clean_run.data.labeled
    rng = np.random.default_rng(args.seed)
    flipped = sorted(rng.choice(len(labeled.labels), size=round(args.fraction * len(labeled.labels)), replace=False))
    args.out.mkdir(parents=True, exist_ok=True)
    flips_path = args.out / "flips.csv"
    with open(flips_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sample_id", "label", "true_label"])
        for index in flipped:
            true = int(labeled.labels[index])
            writer.writerow([labeled.sample_ids[index], confused[true], true])

    noisy = replace_dotted(replace_dotted(config, "logging.run_name", "noisy"), "data.label_file", str(flips_path))
    results = train_run(noisy)
    run = load_run(run_folder(noisy))
    flipped_ids = {clean_run.data.labeled.sample_ids[i] for i in flipped}
    is_flipped = torch.tensor([sample_id in flipped_ids for sample_id in run.data.labeled.sample_ids])
    k = int(is_flipped.sum())

    offline = self_influence(run)["last_layer"]
    online_rows = list(csv.DictReader(open(run.run_dir / "influence" / "self_influence_online.csv")))
    online_by_id = {row["sample_id"]: float(row["mean"]) for row in online_rows}
    online = torch.tensor([online_by_id[sample_id] for sample_id in run.data.labeled.sample_ids])
    logits = predict_logits(run.model, run.data.labeled.images, run.mean, run.std, 256, run.device)
    loss = F.cross_entropy(logits, run.data.labeled.labels, reduction="none")
    random_scores = torch.rand(len(loss), generator=torch.Generator().manual_seed(args.seed))
    rankings = {"tracin_last_layer_offline": offline, "tracin_last_layer_online": online, "loss": loss,
                "random": random_scores}
    report = {"experiment": str(args.experiment), "overrides": args.overrides, "steps": args.steps,
              "labeled": len(loss), "flipped": k, "most_confused": confused,
              "noisy_run_top1": results.get("top1"), "k": k,
              "expected_random_precision": k / len(loss), "rankings": {}}
    print(f"{k} of {len(loss)} labeled images flipped to their class's most confused class; precision/recall at k={k}:")
    for name, scores in rankings.items():
        precision, recall = precision_recall_at_k(scores, is_flipped, k)
        precision2, recall2 = precision_recall_at_k(scores, is_flipped, min(2 * k, len(loss)))
        report["rankings"][name] = {"precision_at_k": precision, "recall_at_k": recall,
                                    "precision_at_2k": precision2, "recall_at_2k": recall2}
        print(f"  {name:28s} P@k {precision:.3f}  R@k {recall:.3f}   P@2k {precision2:.3f}  R@2k {recall2:.3f}")
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.out / 'report.json'}")


if __name__ == "__main__":
    main()
