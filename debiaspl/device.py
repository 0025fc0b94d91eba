"""Which torch device a config's `train.device` string means on this machine, and what it does fast."""

import functools
from pathlib import Path

import torch

from debiaspl.errors import UserError


def resolve_device(name: str) -> torch.device:
    """auto -> cuda when available, else cpu; a named CUDA device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)  # the config loader has checked the spelling
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"train.device = {name!r}, but torch sees no CUDA device here; use cpu or auto")
    return device


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags the Linux kernel reports (/proc/cpuinfo); empty elsewhere."""
    try:
        return frozenset(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return frozenset()


@functools.cache
def cpu_model_name() -> str:
    """The CPU's model name as /proc/cpuinfo gives it (the machine beside every timing); the platform's otherwise."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether the forward pass runs under bf16 autocast (train.precision: bf16, fp32 or auto)."""
    if precision != "auto":
        return precision == "bf16"
    return bf16_is_fast(device)


def bf16_is_fast(device: torch.device, flags: frozenset[str] | None = None) -> bool:
    """Whether bf16 autocast is the faster choice on this device (train.precision: auto).

    On CPUs only where bf16 runs in hardware (AVX512-BF16 or AMX): torch's own check (mkldnn bf16
    support) also says yes where bf16 is emulated on plain AVX-512, which is slower than float32.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    flags = cpu_flags() if flags is None else flags
    return device.type == "cpu" and bool({"avx512_bf16", "amx_bf16"} & flags)
