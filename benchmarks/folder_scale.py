"""Training from an ImageNet-LT-sized image folder through the decoded cache: start-up time and peak memory.

Makes --images synthetic photos of mixed sizes (JPEG, quality 85; 500 x 375, 375 x 500, 640 x 480,
320 x 240 and 400 x 400, one in twenty greyscale) in 10 classes, 10% of them the test split, then
runs `debiaspl train` on the CPU config twice with `data.storage: cache`, `data.image_size: S` and
every train image outside the labeled long-tailed split unlabeled (pseudo-labels measured on 10,000
of them, test batches of 64): the first run decodes the folder into the cache, the second maps it. Each run's wall time and peak RSS (the child's ru_maxrss) are
printed (and its start-up: the wall time less the run's train_seconds_this_session) with the
folder's and the cache's sizes. The folder is kept in --scratch for the next
invocation (delete it to free the disk: about 5 KB per image of JPEG plus 3 S^2 bytes of cache).

    python benchmarks/folder_scale.py --images 116000 --image-size 224 --scratch /tmp/folder_scale \
        --json benchmarks/results/folder_scale_<machine>.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SIZES = ((500, 375), (375, 500), (640, 480), (320, 240), (400, 400))


def _texture(width: int, height: int) -> np.ndarray:
    """A smooth colour gradient with grain, so files compress like photos rather than like noise."""
    rng = np.random.default_rng(width * 1000 + height)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = [np.sin(x / (20 + 9 * c)) * np.cos(y / (25 + 7 * c)) for c in range(3)]
    smooth = (np.stack(channels, axis=-1) + 1) * 100
    return np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)


def _write_photos(folder: Path, indices: range) -> None:
    from PIL import Image

    textures = {size: _texture(*size) for size in SIZES}
    for index in indices:
        split = "test" if (index // 10) % 10 == 0 else "train"  # every class in both splits
        target = folder / split / f"class{index % 10}"
        target.mkdir(parents=True, exist_ok=True)
        pixels = np.roll(textures[SIZES[index % len(SIZES)]], index * 7, axis=1)  # no two files alike
        image = Image.fromarray(pixels)
        (image.convert("L") if index % 20 == 0 else image).save(target / f"{index:07d}.jpg", quality=85)


def make_folder(folder: Path, count: int, workers: int = 2) -> float:
    """Writes the folder unless a complete one of `count` images is there; the seconds it took."""
    done = folder / "complete.json"
    if done.is_file() and json.loads(done.read_text()).get("images") == count:
        return 0.0
    start = time.perf_counter()
    chunks = [range(start_index, min(start_index + 2000, count)) for start_index in range(0, count, 2000)]
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_write_photos, [folder] * len(chunks), chunks))
    done.write_text(json.dumps({"images": count}))
    return time.perf_counter() - start


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def train_once(name: str, root: Path, scratch: Path, image_size: int, steps: int, batch_size: int,
               overrides: list[str]) -> dict:
    """One `debiaspl train` run: its wall time, peak RSS and exit status."""
    settings = ["data.dataset=imagefolder", f"data.root={root}", f"data.image_size={image_size}",
                "data.storage=cache", f"data.cache_dir={scratch / 'cache'}", "data.num_unlabeled_head=0",
                f"train.steps={steps}", f"train.batch_size={batch_size}", f"eval.interval={steps}",
                f"logging.checkpoint_interval={steps}", "eval.pseudo_label_images=10000", "eval.batch_size=64", f"logging.run_dir={scratch / 'runs'}",
                f"logging.run_name={name}", "train.device=cpu", *overrides]
    command = [sys.executable, "-m", "debiaspl", "train", str(REPO / "experiments" / "cifar10lt_cpu_debiaspl.yaml")]
    for setting in settings:
        command += ["--set", setting]
    shutil.rmtree(scratch / "runs" / name, ignore_errors=True)  # a fresh run, not a resume
    start = time.perf_counter()
    child = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    if status != 0:
        print(output[-3000:])
        raise SystemExit(f"the {name} run failed (wait status {status})")
    results = json.loads((scratch / "runs" / name / "results.json").read_text())
    training = results["train_seconds_this_session"]  # the steps and evaluations; the rest is start-up
    return {"name": name, "seconds": seconds, "startup_seconds": seconds - training, "training_seconds": training,
            "peak_rss_bytes": usage.ru_maxrss * 1024, "top1": results["top1"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=116000)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=16, help="labeled images a step (mu = 2 unlabeled each)")
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/folder_scale"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="more settings for both runs")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from debiaspl.device import cpu_model_name

    root = args.scratch / f"photos{args.images}"
    made = make_folder(root, args.images)
    print(f"{cpu_model_name()}: {args.images} photos in {root} ({folder_bytes(root) / 1e9:.2f} GB"
          + (f", written in {made:.0f} s)" if made else ", already there)"), flush=True)
    for stale in (args.scratch / "cache").glob("*.npy"):
        stale.unlink()  # the first run decodes
    runs = []
    for name in ("first", "second"):
        run = train_once(name, root, args.scratch, args.image_size, args.steps, args.batch_size, args.overrides)
        runs.append(run)
        print(f"{name} run ({'decodes into the cache' if name == 'first' else 'maps the cache'}): "
              f"{run['seconds']:.0f} s ({run['startup_seconds']:.0f} s before training), "
              f"peak RSS {run['peak_rss_bytes'] / 1e9:.2f} GB", flush=True)
    cache = folder_bytes(args.scratch / "cache")
    print(f"cache: {cache / 1e6:,.0f} MB at {args.image_size} px")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"cpu": cpu_model_name(), "images": args.images, "image_size": args.image_size,
                                         "steps": args.steps, "batch_size": args.batch_size,
                                         "overrides": args.overrides, "folder_bytes": folder_bytes(root),
                                         "cache_bytes": cache, "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
