"""Side by side with the USB framework: images/s of FixMatch on WRN-28-2, CIFAR-10-LT, on this machine.

For each batch size, --rounds rounds; each round runs USB (../shared/peers/usb, its own CIFAR-10-LT
FixMatch config, on the CPU through the peer's harness) and debiaspl (experiments/cifar10lt_protocol.yaml
with protocol usb and algorithm fixmatch: the same network, batch, mu, optimizer, EMA and threshold,
on the JPEG copy) one after the other, the order swapped every round so drift in the machine's speed
weighs on both, and prints each round's seconds per step, images/s and the ratio. Then the machine's
arithmetic floor: the FLOPs of one WRN-28-2 training step (torch.utils.flop_counter, forward +
backward of the convolutions and the linear layer) over the measured peak of a large matmul in the
dtype each side computes in (USB: fp32; ours: what train.precision resolves to here), and the
fraction of that peak each side reaches. The peak is measured after every round and the best one
taken: on a shared virtual machine a single measurement came out at 180 GFLOP/s where the same
matmul reaches 318 a minute later, which would put a step above "100% of peak". Exits 0 with a note
when the peer folder is absent.

    python benchmarks/vs_usb.py --batch-sizes 16,64 --rounds 2 --json benchmarks/results/vs_usb_<machine>.json

To measure what a CPU with fewer instructions gets, cap the instruction set of torch's kernels for
both sides (and for the peak matmul) with the environment, e.g. AVX2 only, as on an AMD Zen 3:

    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 python benchmarks/vs_usb.py ...

The JSON records those variables and the kernel level torch reports (`isa`).

USB runs in its own virtual environment, made once by the peer's setup.sh in --scratch (2-3 minutes).
Nothing of USB's code is imported here: it runs as a separate process and its timing is read from
the SEC_PER_ITER line its harness prints.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from debiaspl.device import cpu_model_name

REPO = Path(__file__).resolve().parent.parent
PEER = REPO.parent / "shared" / "peers" / "usb"
ISA_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS")
PEAK_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
JPEG_COPY = REPO.parent / "shared" / "data" / "cifar10-jpeg"
EXPERIMENT = REPO / "experiments" / "cifar10lt_protocol.yaml"


def matmul_peak_flops(dtype: torch.dtype, size: int = 2048, repeats: int = 10) -> float:
    """Best FLOP/s of a size x size matmul in `dtype` on the CPU (the machine's practical peak)."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best


def training_flops_per_image() -> float:
    """FLOPs of forward + backward of one image through WRN-28-2 (conv and linear layers), batch of 16."""
    from torch.utils.flop_counter import FlopCounterMode

    from debiaspl.models import build_model

    model = build_model("wrn28_2", num_classes=10, in_channels=3)
    images = torch.randn(16, 3, 32, 32)
    with FlopCounterMode(display=False) as counter:
        model(images).sum().backward()
    return counter.get_total_flops() / 16


def run_usb(scratch: Path, batch: int, mu: int, iters: int) -> dict:
    env = dict(os.environ, SCRATCH=str(scratch), RUN_ROOT=str(scratch / "usb_runs"))
    done = subprocess.run(["bash", str(PEER / "run_usb.sh"), "fixmatch", str(iters), str(batch), str(mu), "wrn_28_2"],
                          env=env, capture_output=True, text=True)
    match = re.search(r"^SEC_PER_ITER ([0-9.]+)", done.stdout, re.MULTILINE)
    if done.returncode or not match:
        raise SystemExit(f"USB failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return {"seconds_per_step": float(match.group(1))}


def run_ours(batch: int, mu: int, steps: int, overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "throughput.json"
        command = [sys.executable, str(REPO / "benchmarks" / "throughput.py"), str(EXPERIMENT),
                   "--set", "algorithm.name=fixmatch", "--set", "data.dataset=imagefolder",
                   "--set", f"data.root={JPEG_COPY}", "--set", f"train.batch_size={batch}",
                   "--set", f"train.unlabeled_ratio={mu}", "--set", "hooks=[]",
                   *[part for override in overrides for part in ("--set", override)],
                   "--steps", str(steps), "--warmup", "5", "--json", str(out)]
        done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
        if done.returncode:
            raise SystemExit(f"debiaspl failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        result = json.loads(out.read_text())
    return {"seconds_per_step": result["step_seconds"], "model_only_seconds": result["model_only_seconds"],
            "bf16": result["bf16_autocast"], "channels_last": result["config"]["train"]["channels_last"],
            "compile": result["config"]["train"]["compile"], "peak_memory_mib": result["peak_memory_mib"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="16,64")
    parser.add_argument("--mu", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--usb-iters", type=int, default=20, help="USB iterations a run (its harness times 3..N-1)")
    parser.add_argument("--steps", type=int, default=20, help="our timed steps a run (after 5 warm-up steps)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra settings for our side")
    parser.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()) / "debiaspl_usb_peer")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not (PEER / "run_usb.sh").is_file() or not JPEG_COPY.is_dir():
        print(f"skipped: the USB peer ({PEER}) or the JPEG copy of CIFAR-10 ({JPEG_COPY}) is not here")
        return
    if not (args.scratch / "usbvenv" / "bin" / "python").exists() or not (args.scratch / "usb").is_dir():
        print(f"setting up USB in {args.scratch} (once)")
        subprocess.run(["bash", str(PEER / "setup.sh"), str(args.scratch)], check=True, capture_output=True)

    rows, peak_samples = [], {"fp32": []}
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        for round_index in range(args.rounds):
            order = ("usb", "ours") if round_index % 2 == 0 else ("ours", "usb")
            measured = {}
            for side in order:
                measured[side] = (run_usb(args.scratch, batch, args.mu, args.usb_iters) if side == "usb"
                                  else run_ours(batch, args.mu, args.steps, args.overrides))
            images = batch * (1 + 2 * args.mu)
            row = {"batch_size": batch, "mu": args.mu, "round": round_index + 1, "order": list(order),
                   "images_per_step": images, "usb": measured["usb"], "ours": measured["ours"],
                   "ratio": measured["usb"]["seconds_per_step"] / measured["ours"]["seconds_per_step"]}
            rows.append(row)
            for dtype in ("fp32", "bf16") if measured["ours"]["bf16"] else ("fp32",):
                peak_samples.setdefault(dtype, []).append(matmul_peak_flops(PEAK_DTYPES[dtype]))
            print(f"B = {batch:3d}, mu = {args.mu}, round {round_index + 1} ({' then '.join(order)}): "
                  f"USB {measured['usb']['seconds_per_step']:.3f} s/step "
                  f"({images / measured['usb']['seconds_per_step']:.0f} images/s), ours "
                  f"{measured['ours']['seconds_per_step']:.3f} s/step "
                  f"({images / measured['ours']['seconds_per_step']:.0f} images/s): {row['ratio']:.2f}x", flush=True)

    flops = training_flops_per_image()
    isa = {"torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
           **{name: os.environ[name] for name in ISA_VARIABLES if name in os.environ}}
    ours_bf16 = rows[0]["ours"]["bf16"]
    peaks = {dtype: max(samples) for dtype, samples in peak_samples.items()}
    print(f"\n{cpu_model_name()} (kernels: {', '.join(f'{k} {v}' for k, v in isa.items())}), "
          f"{torch.get_num_threads()} torch threads; WRN-28-2 training step: "
          f"{flops / 1e9:.3f} GFLOP per image; matmul peak "
          + ", ".join(f"{name} {value / 1e9:.0f} GFLOP/s (best of "
                    + "/".join(f"{sample / 1e9:.0f}" for sample in peak_samples[name]) + ")"
                    for name, value in peaks.items()))
    for row in rows:
        work = flops * row["images_per_step"]
        row["floor_seconds"] = {"usb": work / peaks["fp32"], "ours": work / peaks["bf16" if ours_bf16 else "fp32"]}
        row["fraction_of_peak"] = {side: row["floor_seconds"][side] / row[side]["seconds_per_step"]
                                   for side in ("usb", "ours")}
        print(f"B = {row['batch_size']:3d} round {row['round']}: floor USB {row['floor_seconds']['usb']:.3f} s "
              f"(reaches {100 * row['fraction_of_peak']['usb']:.0f}% of the fp32 peak), ours "
              f"{row['floor_seconds']['ours']:.3f} s ({100 * row['fraction_of_peak']['ours']:.0f}% of the "
              f"{'bf16' if ours_bf16 else 'fp32'} peak)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"cpu": cpu_model_name(), "torch": torch.__version__,
                                         "threads": torch.get_num_threads(), "isa": isa, "flops_per_image": flops,
                                         "matmul_peak_flops": peaks,
                                         "matmul_peak_samples": peak_samples, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
