"""Can TracIn self-influence find mislabeled training images? A planted-mislabel experiment.

1. Choose a wrong label for a fraction of the labeled set: with --flip-to confused (the default),
   train a clean run and take, for every class, the wrong class its test images are most confused
   with (the largest mean softmax probability among the wrong classes); with --flip-to random, a
   uniformly drawn other class (symmetric label noise; no clean run).
2. Write the flips as a data.label_file and train with weight snapshots, the online influence hook
   and the cartography hook.
3. Rank the labeled images by offline TracIn (last layer, over the snapshots), by the online hook,
   by cartography's confidence (lowest first), by the loss of the final model, and at random;
   report precision and recall at k = #flipped and 2k, and draw the top-k of each ranking.

    python benchmarks/mislabel_detection.py                      # digits-LT quickstart, ~2 minutes on 2 CPU cores
    python benchmarks/mislabel_detection.py experiments/cifar10lt_mini.yaml --flip-to random \
        --fraction 0.05 --steps 4096 --out runs/mislabel_cifar10lt   # CIFAR-10-LT from the JPEG copy
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from debiaspl.hooks.cartography import CartographyOptions
from debiaspl.inference import predict_logits
from debiaspl.metrics.gallery import entries_from, split_rows, write_gallery
from debiaspl.metrics.classification import shot_groups
from debiaspl.metrics.influence import precision_recall_at_k
from debiaspl.analysis.influence_run import self_influence
from debiaspl.analysis.load_run import cartography_metric, load_run
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


def write_top_k_gallery(path: Path, run, rankings: dict[str, torch.Tensor], true_labels: torch.Tensor,
                        per_ranking: int) -> None:
    """One row per ranking: its top images, captioned with the given (maybe flipped) label and the truth."""
    labeled, names = run.data.labeled, run.data.class_names
    rows = []
    for name, scores in rankings.items():
        top = torch.argsort(torch.as_tensor(scores, dtype=torch.float64), descending=True)[:per_ranking]
        flips = int((labeled.labels[top] != true_labels[top]).sum())
        shown, score_name = (-scores, "confidence") if name == "cartography_low_confidence" else (scores, "score")
        rows.append(split_rows(entries_from(labeled.images, top.tolist(), labeled.sample_ids, names,
                                            labels=labeled.labels, pseudo_labels=true_labels, scores=shown,
                                            score_name=score_name, pseudo_name="true"),
                               per_row=per_ranking, what=f"{name}: {flips} of {per_ranking} flipped, ranks")[0])
    write_gallery(path, rows, "Top-ranked labeled images of each mislabel detector (label: the given, maybe "
                              "flipped, label; true: the hidden one)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", type=Path, nargs="?", default=Path("experiments/quickstart.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--fraction", type=float, default=0.1, help="fraction of the labeled set to flip")
    parser.add_argument("--flip-to", choices=("confused", "random"), default="confused",
                        help="the wrong label: the class's most confused class (needs a clean run) or a random other class")
    parser.add_argument("--snapshots", type=int, default=10, help="TracIn checkpoints over the run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/mislabel_detection"))
    parser.add_argument("--rank-only", action="store_true",
                        help="train nothing: rank again the noisy run and flips.csv an earlier invocation left in --out")
    args = parser.parse_args()
    if args.rank_only:  # what the training invocation said, from its report, rather than this one's defaults
        earlier = json.loads((args.out / "report.json").read_text()) if (args.out / "report.json").is_file() else {}
        kept = {key: earlier[key] for key in ("experiment", "overrides", "flip_to", "most_confused", "seed")
                if key in earlier}
        rank(args.out / "noisy", args.out / "flips.csv", args, kept)
        return

    config = load_experiment(args.experiment, args.overrides)
    for key, value in (("train.steps", args.steps), ("logging.run_dir", str(args.out)),
                       ("logging.snapshot_interval", max(1, args.steps // args.snapshots)),
                       ("eval.interval", args.steps), ("logging.checkpoint_interval", args.steps)):
        config = replace_dotted(config, key, value)
    config = dataclasses.replace(config, hooks=(
        HookConfig("influence", InfluenceHook.Options()),
        HookConfig("cartography", CartographyOptions(unlabeled=False, figure_interval=args.steps))))

    rng = np.random.default_rng(args.seed)
    if args.flip_to == "confused":
        clean = replace_dotted(config, "logging.run_name", "clean")
        train_run(clean)
        clean_run = load_run(run_folder(clean))
        confused = most_confused_classes(clean_run)
        labeled, class_names = clean_run.data.labeled, clean_run.data.class_names
    else:
        from debiaspl.data.prepare import prepare_data

        data = prepare_data(config.data)
        labeled, class_names, confused = data.labeled, data.class_names, None
    num_classes = len(class_names)
    flipped = sorted(rng.choice(len(labeled.labels), size=round(args.fraction * len(labeled.labels)), replace=False))
    args.out.mkdir(parents=True, exist_ok=True)
    flips_path = args.out / "flips.csv"
    with open(flips_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sample_id", "label", "true_label"])
        for index in flipped:
            true = int(labeled.labels[index])
            wrong = confused[true] if confused else (true + int(rng.integers(1, num_classes))) % num_classes
            writer.writerow([labeled.sample_ids[index], class_names[wrong], class_names[true]])

    noisy = replace_dotted(replace_dotted(config, "logging.run_name", "noisy"), "data.label_file", str(flips_path))
    train_run(noisy)
    rank(run_folder(noisy), flips_path, args, {"most_confused": confused})


def rank(run_dir: Path, flips_path: Path, args, extra: dict) -> None:
    """Rank the noisy run's labeled images by every detector; report.json and the top-k gallery in args.out."""
    run = load_run(run_dir)
    names, labeled = run.data.class_names, run.data.labeled
    with open(flips_path, newline="") as handle:
        true_by_id = {row["sample_id"]: names.index(row["true_label"]) for row in csv.DictReader(handle)}
    is_flipped = torch.tensor([sample_id in true_by_id for sample_id in labeled.sample_ids])
    true_labels = torch.tensor([true_by_id.get(sample_id, int(label))
                                for sample_id, label in zip(labeled.sample_ids, labeled.labels)])
    k = int(is_flipped.sum())

    offline = self_influence(run)  # also the loss of every labeled image under the run's own weights
    with open(run.run_dir / "influence" / "self_influence_online.csv", newline="") as handle:
        online_by_id = {row["sample_id"]: float(row["mean"]) for row in csv.DictReader(handle)}
    online = torch.tensor([online_by_id[sample_id] for sample_id in labeled.sample_ids])
    loss = offline["loss"]
    seed = extra.get("seed", args.seed)  # with --rank-only, the training invocation's
    random_scores = torch.rand(len(loss), generator=torch.Generator().manual_seed(seed))
    confidence = cartography_metric(run, "labeled", "confidence", "the cartography ranking")
    rankings = {"tracin_last_layer_offline": offline["last_layer"], "tracin_last_layer_online": online,
                "cartography_low_confidence": -confidence, "loss": loss, "random": random_scores}
    groups = shot_groups(run.data.labeled_counts)
    group_of = {cls: group for group, classes in groups.items() for cls in classes}
    results = json.loads((run.run_dir / "results.json").read_text())
    report = {"experiment": str(args.experiment), "overrides": args.overrides, "steps": results["step"],
              "seed": seed, "labeled": len(loss), "flipped": k, "flip_to": args.flip_to, **extra,
              "noisy_run_top1": results.get("top1"), "k": k, "expected_random_precision": k / len(loss),
              "shot_groups": {group: [names[c] for c in classes] for group, classes in groups.items()},
              "rankings": {}}
    target = "a random other class" if report["flip_to"] == "random" else "their class's most confused class"
    print(f"{k} of {len(loss)} labeled images flipped to {target}; precision/recall at k={k}:")
    for name, scores in rankings.items():
        precision, recall = precision_recall_at_k(scores, is_flipped, k)
        precision2, recall2 = precision_recall_at_k(scores, is_flipped, min(2 * k, len(loss)))
        top = torch.argsort(torch.as_tensor(scores, dtype=torch.float64), descending=True)[:k]
        clean_in_top = [group_of[int(true_labels[i])] for i in top if not is_flipped[i]]
        report["rankings"][name] = {"precision_at_k": precision, "recall_at_k": recall,
                                    "precision_at_2k": precision2, "recall_at_2k": recall2,
                                    "clean_in_top_k_by_true_group": {g: clean_in_top.count(g) for g in groups}}
        print(f"  {name:28s} P@k {precision:.3f}  R@k {recall:.3f}   P@2k {precision2:.3f}  R@2k {recall2:.3f}"
              f"   clean images in the top k by shot group: {report['rankings'][name]['clean_in_top_k_by_true_group']}")
    write_top_k_gallery(args.out / "top_k_gallery", run, rankings, true_labels, per_ranking=10)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.out / 'report.json'} and {args.out / 'top_k_gallery.png'}")


if __name__ == "__main__":
    main()
