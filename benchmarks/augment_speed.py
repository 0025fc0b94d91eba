"""Augmenting one training batch: our batched uint8 pipeline against per-image torchvision transforms.

The batch is a FixMatch step's: B labeled images (weak view) and mu * B unlabeled ones (weak and
strong views), 32 x 32 RGB. The per-image path is what Python loaders of peer frameworks run for
every image: torchvision.transforms.v2 flip + reflect-pad crop, RandAugment (2 ops) and a 16-pixel
Cutout (RandomErasing of a fixed square), one image at a time. The batched path is
debiaspl.data.loaders.augment_batch, the function the trainer calls. Both on the CPU with the
threads torch is given, medians over --repeats.

    python benchmarks/augment_speed.py --batch-size 64 --unlabeled-ratio 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torchvision.transforms import v2

from debiaspl.data.loaders import UnaugmentedBatch, augment_batch


def per_image_pipelines(size: int):
    weak = v2.Compose([v2.RandomHorizontalFlip(), v2.RandomCrop(size, padding=size // 8, padding_mode="reflect")])
    cutout_area = (size // 2) ** 2 / size ** 2
    strong = v2.Compose([weak, v2.RandAugment(num_ops=2),
                         v2.RandomErasing(p=1.0, scale=(cutout_area, cutout_area), ratio=(1.0, 1.0), value=127)])
    return weak, strong


def time_median(function, repeats: int) -> float:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--unlabeled-ratio", type=int, default=2)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(0)
    shape = (3, args.size, args.size)
    x_lb = torch.randint(0, 256, (args.batch_size, *shape), dtype=torch.uint8, generator=generator)
    x_ulb = torch.randint(0, 256, (args.batch_size * args.unlabeled_ratio, *shape), dtype=torch.uint8,
                          generator=generator)
    labels = torch.zeros(len(x_lb), dtype=torch.long)
    batch = UnaugmentedBatch(x_lb, labels, labels, x_ulb, labels.repeat(args.unlabeled_ratio),
                             labels.repeat(args.unlabeled_ratio))
    weak, strong = per_image_pipelines(args.size)

    def per_image():
        torch.stack([weak(image) for image in x_lb])
        torch.stack([weak(image) for image in x_ulb])
        torch.stack([strong(image) for image in x_ulb])

    steps = iter(range(10 ** 9))
    batched = time_median(lambda: augment_batch(batch, next(steps), 0, "fixmatch"), args.repeats)
    looped = time_median(per_image, args.repeats)
    result = {"batch_size": args.batch_size, "unlabeled_ratio": args.unlabeled_ratio, "size": args.size,
              "threads": torch.get_num_threads(), "repeats": args.repeats,
              "images_augmented": args.batch_size * (1 + 2 * args.unlabeled_ratio),
              "batched_ms": 1000 * batched, "per_image_torchvision_ms": 1000 * looped, "speedup": looped / batched}
    print(f"one step's augmentation ({result['images_augmented']} views of {args.size}x{args.size}, "
          f"{result['threads']} threads): batched {result['batched_ms']:.1f} ms, per-image torchvision "
          f"{result['per_image_torchvision_ms']:.1f} ms ({result['speedup']:.1f}x)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
