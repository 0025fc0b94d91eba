"""Decoding image files on one thread or on the decoding threads, by image size.

Pillow releases the GIL while it decodes pixels but not while it opens a file and converts the
result, so threads pay only where the pixels dominate. For each side in --sides this writes
--count JPEGs (quality 90, random pixels) into a temporary folder, plus 500 x 375 photos, and
times debiaspl.data.image_folder.decode_image over them with the builtin map and with the
process's decoding threads, alternating the two, --rounds rounds. It prints the ratio per round
and which of the two debiaspl.data.image_folder.decoding_map picks for that folder. --folder adds
the first --count files of a real ImageFolder split (e.g. the CIFAR-10 JPEG copy's train/).

    python benchmarks/decode_threads.py --sides 32,64,96,192 --count 1500 --rounds 3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from debiaspl.data.image_folder import _thread_pool, class_folders, decode_image, decoding_map, list_images, usable_cores
from debiaspl.device import cpu_model_name


def write_jpegs(folder: Path, width: int, height: int, count: int) -> list[Path]:
    folder.mkdir(parents=True)
    base = (np.random.default_rng(0).random((height, width, 3)) * 255).astype(np.uint8)
    files = [folder / f"{index:05d}.jpg" for index in range(count)]
    for index, path in enumerate(files):
        Image.fromarray(np.roll(base, index, axis=1)).save(path, quality=90)  # no two files alike
    return files


def images_per_second(mapping, files: list[Path], size: int) -> float:
    start = time.perf_counter()
    for _ in mapping(lambda path: decode_image(path, "RGB", size), files):
        pass
    return len(files) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", default="32,64,96,192", help="square JPEG sides to measure")
    parser.add_argument("--count", type=int, default=1500, help="files per square side (a third of it for photos)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--folder", type=Path, help="an ImageFolder split (CLASS/* files) to measure too")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    threads = _thread_pool().map
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        folders = [(f"{side} x {side}", write_jpegs(Path(scratch) / str(side), side, side, args.count), 0)
                   for side in map(int, args.sides.split(","))]
        photos = write_jpegs(Path(scratch) / "photos", 500, 375, max(2, args.count // 3))
        folders += [("500 x 375 -> 224", photos, 224), ("500 x 375 -> 32", photos, 32)]
        if args.folder:
            folders.append((str(args.folder), list_images(args.folder, class_folders(args.folder))[0][:args.count], 0))
        for name, files, size in folders:
            ratios = []
            for round_index in range(args.rounds):
                order = [("one thread", map), ("threads", threads)]
                speed = dict((label, images_per_second(mapping, files, size))
                             for label, mapping in (order if round_index % 2 == 0 else order[::-1]))
                ratios.append(speed["threads"] / speed["one thread"])
                print(f"{name:>18}  round {round_index + 1}: one thread {speed['one thread']:6.0f} img/s, "
                      f"threads {speed['threads']:6.0f} img/s, threads / one = {ratios[-1]:.2f}", flush=True)
            picked = "threads" if decoding_map(files) is not map else "one thread"
            print(f"{name:>18}  median {statistics.median(ratios):.2f}; decoding_map picks: {picked}")
            rows.append({"images": name, "threads_over_one": ratios, "picked": picked})
    result = {"cpu": cpu_model_name(), "cores": usable_cores(),
              "decoding_threads": _thread_pool()._max_workers, "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
