"""The zero-shot setting end to end on constructed teacher logits: a student trained on a biased
teacher's labels (data.teacher_logits) against the teacher itself, with and without DebiasPL.

The teacher labels the bundled digits train pool from the true labels: +STRENGTH on the true class,
Gaussian noise growing towards the tail classes, and an offset favouring the head classes, so its
labels are about 70% right and its class histogram falls from head to tail while the truth is flat.
Its confident images (>= 0.95) become the labeled set; the student (small CNN) trains on the rest
as the official main_DebiasPL_ZeroShot.py does. About a minute on 2 CPU cores.

    python benchmarks/zero_shot_student.py [--steps 400] [--seeds 0,1,2] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np

from debiaspl.config import from_dict
from debiaspl.data.datasets import load_source
from debiaspl.engine.run import run_folder, train_run
from debiaspl.run_folder import RESULTS_NAME, RUN_INFO_NAME


def write_biased_teacher(path: Path, strength: float = 4.0, head_bias: float = 2.5, noise: float = 1.5,
                         seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Write the teacher's .npz for the digits train pool; returns its logits [N, 10] and the true labels [N]."""
    pool = load_source("digits", "data", False).train
    labels, num_classes = pool.labels.numpy(), 10
    rng = np.random.default_rng(seed)
    per_class_noise = noise * (0.5 + np.arange(num_classes) / (num_classes - 1))
    logits = rng.normal(0, 1, (len(labels), num_classes)) * per_class_noise[labels][:, None]
    logits += head_bias * (1 - np.arange(num_classes) / (num_classes - 1))
    logits[np.arange(len(labels)), labels] += strength
    np.savez(path, sample_ids=np.array(pool.sample_ids), logits=logits.astype(np.float32))
    return logits, labels


def train_student(teacher: Path, run_dir: Path, algorithm: str, seed: int, steps: int) -> tuple[dict, dict]:
    config = from_dict({
        "data": {"dataset": "digits", "teacher_logits": str(teacher), "num_workers": 0},
        "model": {"name": "small_cnn"},
        "train": {"steps": steps, "batch_size": 32, "unlabeled_ratio": 2, "device": "cpu", "seed": seed},
        "algorithm": {"name": algorithm, "marginal_momentum": 0.99, "fixmatch": {"threshold": 0.8}},
        "eval": {"interval": steps},
        "logging": {"run_dir": str(run_dir), "run_name": f"{algorithm}-seed{seed}", "progress_bar": False}})
    train_run(config)
    folder = run_folder(config)
    return (json.loads((folder / RUN_INFO_NAME).read_text())["teacher"],
            json.loads((folder / RESULTS_NAME).read_text()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--json", type=Path, help="write the table as JSON here")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    rows: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        teacher_path = Path(scratch) / "teacher.npz"
        write_biased_teacher(teacher_path)
        for algorithm in ("fixmatch", "fixmatch+debiaspl"):
            for seed in seeds:
                teacher, student = train_student(teacher_path, Path(scratch) / "runs", algorithm, seed, args.steps)
                row = rows.setdefault(f"student: {algorithm}", {})
                for key in ("pseudo_acc", "pseudo_balanced_acc", "pseudo_kl_to_true", "top1"):
                    row.setdefault(key, []).append(student[key])
        rows = {"teacher": {"pseudo_acc": [teacher["unlabeled_accuracy"]],
                            "pseudo_kl_to_true": [teacher["unlabeled_kl_to_true"]]}, **rows}
    print(f"{len(seeds)} seeds, {args.steps} steps; on the unlabeled images (the teacher's own labels vs the "
          f"student's pseudo-labels), and the student's test top-1")
    print(f"{'':28s} {'accuracy':>16s} {'balanced':>16s} {'KL to truth':>16s} {'test top-1':>16s}")
    for name, row in rows.items():
        cells = [_cell(row.get(key)) for key in ("pseudo_acc", "pseudo_balanced_acc", "pseudo_kl_to_true", "top1")]
        print(f"{name:28s} " + " ".join(f"{c:>16s}" for c in cells))
    if args.json:
        args.json.write_text(json.dumps({"steps": args.steps, "seeds": seeds, "rows": rows}, indent=2) + "\n")


def _cell(values: list[float] | None) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"


if __name__ == "__main__":
    main()
