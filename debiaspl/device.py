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
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX), so bf16 autocast speeds it up.

    torch's own check (mkldnn bf16 support) also says yes where bf16 is only emulated on AVX-512,
    which is slower than float32; the kernel's CPU flags tell the two apart. Linux only: elsewhere no.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bf16 autocast is the faster choice on this device (train.precision: auto)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()
