"""Images/s of the three ways to hold an image folder (data.storage: memory, cache, stream), alternated.

Times what the trainer's loader does per step, gathering the step's images and augmenting them
(make_train_batch: B labeled weak views, mu * B unlabeled weak and strong views), for each storage
in turn, round after round, so every ratio compares runs a few seconds apart. The stream path is
also timed with DataLoader workers decoding ahead. Reports images/s (B + mu * B per step) and
each path's ratio to the in-memory one within its round. The cache is timed twice: as it reads
(each read hands its pages back to the page cache) and with its pages kept resident
("cache-kept"), to show what handing them back costs.

    python benchmarks/data_paths.py --root ../shared/data/cifar10-jpeg
    python benchmarks/data_paths.py --photos 3000 --image-size 224 --rounds 2   # a folder of synthetic 500 x 375 JPEGs
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from debiaspl.data.datasets import FolderOptions, load_image_folder
from debiaspl.data.image_set import MappedImages
from debiaspl.data.loaders import make_train_batch, train_loader
from debiaspl.data.augment import StrongAugment


def synthetic_photos(folder: Path, count: int) -> Path:
    """`count` 500 x 375 JPEGs (quality 90) in 10 classes, 10% of them as the test split."""
    from PIL import Image

    rng = np.random.default_rng(0)
    base = (rng.random((375, 500, 3)) * 255).astype(np.uint8)
    for index in range(count):
        split = "test" if (index // 10) % 10 == 0 else "train"  # every class in both splits
        target = folder / split / f"class{index % 10}"
        target.mkdir(parents=True, exist_ok=True)
        pixels = np.roll(base, index * 7, axis=1)  # no two files alike, realistic JPEG entropy
        Image.fromarray(pixels).save(target / f"{index:06d}.jpg", quality=90)
    return folder


def time_steps(source, steps: int, batch_size: int, ratio: int, workers: int) -> float:
    """Seconds per step of gathering + augmenting, after one untimed step (with workers: the first batch)."""
    train = source.train
    options = dict(batch_size=batch_size, unlabeled_ratio=ratio, seed=0, strong=StrongAugment())
    if workers == 0:
        make_train_batch(train, train, 0, **options)
        start = time.perf_counter()
        for step in range(1, steps + 1):
            make_train_batch(train, train, step, **options)
        return (time.perf_counter() - start) / steps
    batches = iter(train_loader(train, train, start_step=0, end_step=steps + 1, num_workers=workers,
                                pin_memory=False, **options))
    next(batches)  # the workers have started; what they prefetch from here on is part of the rate
    start = time.perf_counter()
    for _ in range(steps):
        next(batches)
    return (time.perf_counter() - start) / steps


def keeping_pages(source):
    """The cache path with the map's pages kept resident after each read (how it read before they were handed back)."""
    images = source.train.images
    return dataclasses.replace(source, train=dataclasses.replace(
        source.train, images=MappedImages(images.mapped, images.index)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="an ImageFolder tree (default: synthetic photos, see --photos)")
    parser.add_argument("--photos", type=int, default=3000, help="synthetic 500 x 375 JPEGs when --root is not given")
    parser.add_argument("--image-size", type=int, default=0, help="data.image_size (0: the images' own size)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--unlabeled-ratio", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for the extra stream row")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="debiaspl-data-paths-"))
    root = Path(args.root) if args.root else synthetic_photos(scratch / "photos", args.photos)
    size = args.image_size
    started = time.perf_counter()
    sources = {storage: load_image_folder(str(root), options=FolderOptions(size, storage, str(scratch / "cache")))
               for storage in ("memory", "cache", "stream")}
    print(f"loaded in {time.perf_counter() - started:.1f} s (the cache built once); "
          f"{len(sources['memory'].train.labels)} train images of {list(sources['memory'].train.images.shape[1:])}")
    sources["cache-kept"] = keeping_pages(sources["cache"])
    rows = [("memory", 0), ("cache", 0), ("cache-kept", 0), ("stream", 0), ("stream", args.workers)]
    per_step = args.batch_size * (1 + args.unlabeled_ratio)
    results = []
    for round_index in range(args.rounds):
        seconds = {f"{storage}/{workers}w": time_steps(sources[storage], args.steps, args.batch_size,
                                                       args.unlabeled_ratio, workers)
                   for storage, workers in rows}
        baseline = seconds["memory/0w"]
        for name, value in seconds.items():
            results.append({"round": round_index, "path": name, "images_per_s": per_step / value,
                            "vs_memory": baseline / value})
            print(f"round {round_index}: {name:10s} {per_step / value:8.0f} images/s  {baseline / value:5.2f}x memory")
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 platform.machine())
    machine = {"cpu": model, "cores": len(os.sched_getaffinity(0)),
               "torch_threads": torch.get_num_threads()}
    if args.out:
        args.out.write_text(json.dumps({"root": str(root), "image_size": size, "batch_size": args.batch_size,
                                        "unlabeled_ratio": args.unlabeled_ratio, "machine": machine,
                                        "results": results}, indent=1))


if __name__ == "__main__":
    main()
