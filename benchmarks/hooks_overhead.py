"""Overhead of the monitoring hooks (drift, cartography, uncertainty) per training step.

Trains the same experiment twice for --steps steps, without hooks and with every hook at its
default options (or the experiment's own `hooks:`), no evaluation, and reports steps/s of both and
the time spent inside hook events, measured around each call. On a CPU the step is synchronous,
so the timings are exact; on a GPU the hook time includes waiting for queued kernels.

    python benchmarks/hooks_overhead.py experiments/cifar10lt_cpu_debiaspl.yaml --steps 600 \
        --set data.dataset=imagefolder --set data.root=../shared/data/cifar10-jpeg
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import torch

from debiaspl.config import HookConfig, load_experiment, replace_dotted
from debiaspl.data.prepare import prepare_data
from debiaspl.device import resolve_device
from debiaspl.engine.run_log import RunLog
from debiaspl.engine.trainer import Trainer
from debiaspl.hooks import HOOKS


def timed_run(config, data, device, steps: int) -> dict:
    trainer = Trainer(config, data, device)
    hook_seconds = {hook.name: 0.0 for hook in trainer.hooks}
    for hook in trainer.hooks:
        for event in ("on_train_start", "on_step_end", "on_evaluation", "on_train_end"):
            original = getattr(hook, event)

            def timed(*args, _original=original, _name=hook.name, **kwargs):
                start = time.perf_counter()
                _original(*args, **kwargs)
                hook_seconds[_name] += time.perf_counter() - start

            setattr(hook, event, timed)
    with tempfile.TemporaryDirectory() as folder:
        log = RunLog(Path(folder), resume_step=0)
        start = time.perf_counter()
        trainer.fit(log, Path(folder), until_step=steps)
        seconds = time.perf_counter() - start
        log.close()
    state_bytes = sum(t.numel() * t.element_size() for hook in trainer.hooks
                      for t in _tensors(hook.on_save_checkpoint()))
    return {"seconds": seconds, "steps_per_second": steps / seconds, "hook_seconds": hook_seconds,
            "hook_state_bytes_in_checkpoint": state_bytes}


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", type=Path)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    config = load_experiment(args.experiment, args.overrides)
    # No evaluation and no checkpoint inside the measured steps; the run is as long as --steps says.
    for key, value in (("eval.interval", 10 ** 9), ("logging.checkpoint_interval", 10 ** 9),
                       ("logging.progress_bar", False)):
        config = replace_dotted(config, key, value)
    hooks = config.hooks or tuple(HookConfig(name, cls.Options()) for name, cls in HOOKS.items())
    device = resolve_device(config.train.device)
    data = prepare_data(config.data)
    without = timed_run(dataclasses.replace(config, hooks=()), data, device, args.steps)
    with_hooks = timed_run(dataclasses.replace(config, hooks=hooks), data, device, args.steps)
    hook_total = sum(with_hooks["hook_seconds"].values())
    result = {
        "experiment": str(args.experiment), "overrides": args.overrides, "steps": args.steps, "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "hooks": [{"name": h.name, **dataclasses.asdict(h.options)} for h in hooks],
        "without_hooks": without, "with_hooks": with_hooks,
        "hook_ms_per_step": 1000 * hook_total / args.steps,
        "hook_fraction_of_step_time": hook_total / with_hooks["seconds"],
    }
    print(f"steps/s without hooks {without['steps_per_second']:.3f}, with hooks {with_hooks['steps_per_second']:.3f}")
    for name, seconds in with_hooks["hook_seconds"].items():
        print(f"  {name:12s} {1000 * seconds / args.steps:7.3f} ms/step")
    print(f"hooks: {result['hook_ms_per_step']:.3f} ms/step = {100 * result['hook_fraction_of_step_time']:.2f}% "
          f"of the step time; their checkpoint state {with_hooks['hook_state_bytes_in_checkpoint'] / 2**20:.1f} MiB")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
