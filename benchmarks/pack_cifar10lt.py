"""A CIFAR-10-LT ImageFolder small enough to travel to a lent GPU machine (about 20 MB of JPEGs).

Copies, from the JPEG copy of CIFAR-10, the train images an experiment's long-tailed split draws
(labeled and unlabeled together) and the whole test set into OUT/train/<class>/ and OUT/test/<class>/.
With the same data.num_labeled_head / num_unlabeled_head / imbalances, a run on OUT draws from a
pool holding exactly those counts, so its labeled and unlabeled sets together are the same images
(which of them are labeled may differ: the split seed draws from a smaller pool).

    python benchmarks/pack_cifar10lt.py experiments/cifar10lt_debiaspl.yaml data/cifar10lt-jpeg
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from debiaspl.config import load_experiment
from debiaspl.data.prepare import prepare_data

JPEG_COPY = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg"


def pack(experiment: Path, out: Path, source: Path = JPEG_COPY) -> int:
    """Copy the split's train images and all test images into `out`; returns how many files it copied."""
    config = load_experiment(experiment, ["data.dataset=imagefolder", f"data.root={source}"])
    data = prepare_data(config.data)
    if out.exists():
        shutil.rmtree(out)
    copied = 0
    for sample_id in data.labeled.sample_ids + data.unlabeled.sample_ids + data.test.sample_ids:
        target = out / sample_id  # sample ids of image folders are paths below the root: train/<class>/<file>
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / sample_id, target)
        copied += 1
    return copied


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--source", type=Path, default=JPEG_COPY)
    args = parser.parse_args()
    copied = pack(args.experiment, args.out, args.source)
    size = sum(path.stat().st_size for path in args.out.rglob("*") if path.is_file())
    print(f"{copied} images ({size / 2 ** 20:.1f} MiB) in {args.out}")


if __name__ == "__main__":
    main()
