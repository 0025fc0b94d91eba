"""Training throughput of an experiment: steps/s, images/s, where the step time goes, and the model-only floor.

Runs the real trainer for --warmup steps, then times --steps more with every phase of the loop in
its own section (data and augmentation, forward, backward, optimizer, hooks, logging), and
compares with the model-only time: the same train_step (forward, losses, backward, optimizer,
EMA) repeated on one pre-built batch, the floor this machine allows for this model and batch.
The floor is timed once before and once after the training steps and averaged, so a shared
machine's drift in speed over the run weighs on both sides of the ratio alike.
No evaluation or checkpoint falls inside the timed steps.

    python benchmarks/throughput.py experiments/cifar10lt_cpu_debiaspl.yaml \
        --set data.dataset=imagefolder --set data.root=../shared/data/cifar10-jpeg --json out.json
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import torch

from debiaspl.config import load_experiment, replace_dotted, to_dict
from debiaspl.data.prepare import prepare_data
from debiaspl.device import cpu_model_name, resolve_device, use_bf16
from debiaspl.engine.run_log import RunLog
from debiaspl.engine.timing import StepTimer
from debiaspl.engine.trainer import Trainer

SECTIONS = ("data", "forward", "backward", "optimizer", "hooks", "logging")


def model_only_seconds(trainer: Trainer, steps: int) -> float:
    """Seconds per train_step on one fixed batch already on the device (no loading, no augmentation)."""
    batch = trainer.prepare_batch(*next(iter(trainer.loader(start_step=trainer.step, end_step=trainer.step + 1))))
    for _ in range(3):
        trainer.train_step(batch)
    trainer.timer.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(batch)
    trainer.timer.synchronize()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", type=Path)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    config = load_experiment(args.experiment, args.overrides)
    for key, value in (("eval.interval", 10 ** 9), ("logging.checkpoint_interval", 10 ** 9),
                       ("logging.progress_bar", False), ("train.steps", max(config.train.steps, 10 ** 6))):
        config = replace_dotted(config, key, value)
    device = resolve_device(config.train.device)
    data = prepare_data(config.data)
    timer = StepTimer(device, enabled=True)
    trainer = Trainer(config, data, device, timer=timer)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    floor_steps = max(10, args.steps // 2)
    with tempfile.TemporaryDirectory() as folder:
        log = RunLog(Path(folder), resume_step=0)
        trainer.fit(log, Path(folder), until_step=args.warmup)
        floor_before = model_only_seconds(trainer, floor_steps)
        timer.reset()
        start = time.perf_counter()
        trainer.fit(log, Path(folder), until_step=trainer.step + args.steps)  # the floor advanced the step
        wall = time.perf_counter() - start
        log.close()
    sections = {name: timer.seconds.get(name, 0.0) / args.steps for name in SECTIONS}
    step_seconds = sum(sections.values())
    floor_after = model_only_seconds(trainer, floor_steps)
    floor = (floor_before + floor_after) / 2
    images_per_step = config.train.batch_size * (1 + 2 * config.train.unlabeled_ratio)
    result = {
        "experiment": str(args.experiment), "overrides": args.overrides, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model_name(),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "bf16_autocast": use_bf16(config.train.precision, device),
        "config": {key: to_dict(config)[key] for key in ("model", "train", "data")},
        "steps": args.steps, "step_seconds": step_seconds, "wall_seconds_per_step": wall / args.steps,
        "steps_per_second": 1 / step_seconds, "images_per_second": images_per_step / step_seconds,
        "section_seconds": sections, "section_fraction": {k: v / step_seconds for k, v in sections.items()},
        "model_only_seconds": floor, "model_only_seconds_before_after": [floor_before, floor_after],
        "step_over_floor": step_seconds / floor,
        "peak_memory_mib": (torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda"
                            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "peak_memory_kind": "CUDA allocated" if device.type == "cuda" else "process max RSS",
    }
    print(f"{args.experiment} on {result['device_name']} ({device}, {result['threads']} threads)")
    print(f"  step {1000 * step_seconds:8.1f} ms   {result['steps_per_second']:.2f} steps/s   "
          f"{result['images_per_second']:.0f} images/s   (wall {1000 * wall / args.steps:.1f} ms/step)")
    for name, seconds in sections.items():
        print(f"  {name:10s} {1000 * seconds:8.1f} ms  {100 * seconds / step_seconds:5.1f}%")
    print(f"  model-only floor {1000 * floor:.1f} ms (before {1000 * floor_before:.1f}, after "
          f"{1000 * floor_after:.1f}): the step costs {result['step_over_floor']:.2f}x the floor; "
          f"peak memory {result['peak_memory_mib']:.0f} MiB ({result['peak_memory_kind']})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
