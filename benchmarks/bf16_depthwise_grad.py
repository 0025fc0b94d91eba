"""The weight gradient of depthwise convolutions under CPU bf16 autocast, as torch computes it and as
debiaspl does (debiaspl/models/depthwise.py), then the model step's time both ways (README, "Models").

Part 1: one backward pass of a torchvision network per seed and image size (8, 16, 32); for every depthwise convolution, the kernel
taps that only ever see padding (their gradient must be exactly 0) are found from the layer's input size,
stride and padding, and the convolutions where such a tap is non-zero or NaN are counted.
Part 2: ms per training step (forward, loss, backward, SGD) of the same network, plain torch against
debiaspl's fp32 depthwise convolutions, alternated in rounds, with fp32 without autocast for reference.

    python benchmarks/bf16_depthwise_grad.py [--seeds 4] [--rounds 3] [--batch 320] [--size 32 (of part 2)]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from debiaspl.device import cpu_model_name
from debiaspl.models import build_model
from debiaspl.models.depthwise import Float32DepthwiseConv2d

NETWORKS = ("torchvision:shufflenet_v2_x0_5", "torchvision:mobilenet_v2")
CHECKED_SIZES = (8, 16, 32)  # at 8 and 16 px the last stages of both networks see 1 x 1 maps


def network(name: str, seed: int, depthwise: str) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model(name, 10, 3, 0.0)
    if depthwise == "torch":  # undo what build_model did: torch's own depthwise convolution
        for module in model.modules():
            if type(module) is Float32DepthwiseConv2d:
                module.__class__ = nn.Conv2d
    return model.to(memory_format=torch.channels_last).train()


def padding_only_taps(conv: nn.Conv2d, height: int, width: int) -> list[tuple[int, int]]:
    """Kernel positions (i, j) whose input rows or columns lie outside the image at every output position."""
    def touches(size: int, axis: int, tap: int) -> bool:
        out = (size + 2 * conv.padding[axis] - conv.dilation[axis] * (conv.kernel_size[axis] - 1) - 1) // conv.stride[axis] + 1
        return any(0 <= o * conv.stride[axis] + tap * conv.dilation[axis] - conv.padding[axis] < size for o in range(out))
    return [(i, j) for i in range(conv.kernel_size[0]) for j in range(conv.kernel_size[1])
            if not touches(height, 0, i) or not touches(width, 1, j)]


def count_unwritten(name: str, seed: int, depthwise: str, bf16: bool, size: int) -> tuple[int, int]:
    """(depthwise convolutions with a padding-only tap, those of them whose padding-only gradient is not 0)."""
    model = network(name, seed, depthwise)
    sizes = {}
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels]
    for conv in convs:
        conv.register_forward_hook(lambda m, args, out: sizes.__setitem__(m, args[0].shape[-2:]))
    images = torch.randn(40, 3, size, size).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        loss = F.cross_entropy(model(images).float(), torch.randint(0, 10, (40,)))
    loss.backward()
    exposed = wrong = 0
    for conv in convs:
        taps = padding_only_taps(conv, *sizes[conv])
        if taps:
            exposed += 1
            gradient = conv.weight.grad
            wrong += any(bool((gradient[:, :, i, j] != 0).any()) for i, j in taps)
    return exposed, wrong


def step_ms(name: str, depthwise: str, bf16: bool, batch: int, size: int, steps: int = 3) -> float:
    model = network(name, 0, depthwise)
    images = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=320, help="images a step (B * (1 + 2 mu) in a run)")
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args()
    print(f"{cpu_model_name()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    variants = (("torch", True, "bf16, torch's depthwise"), ("debiaspl", True, "bf16, fp32 depthwise (debiaspl)"),
                ("torch", False, "fp32, no autocast"))
    for size in CHECKED_SIZES:
        for name in NETWORKS:
            for depthwise, bf16, label in variants:
                counts = [count_unwritten(name, seed, depthwise, bf16, size) for seed in range(args.seeds)]
                print(f"{name} {size} px, {label}: depthwise convolutions with a non-zero padding-only gradient "
                      f"{sum(w for _, w in counts)} of {sum(e for e, _ in counts)} ({args.seeds} seeds)", flush=True)
    for name in NETWORKS:
        for round_index in range(args.rounds):
            order = variants if round_index % 2 == 0 else variants[::-1]
            times = {label: step_ms(name, depthwise, bf16, args.batch, args.size) for depthwise, bf16, label in order}
            print(f"{name} {args.size} px, B = {args.batch}, round {round_index + 1}: "
                  + ", ".join(f"{label} {times[label]:.0f} ms" for _, _, label in variants), flush=True)


if __name__ == "__main__":
    main()
