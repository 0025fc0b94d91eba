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


def augments_on_device(augment_on: str, device: torch.device) -> bool:
    """Whether batches are augmented on the training device after the copy (data.augment_on)."""
    return augment_on == "device" or (augment_on == "auto" and device.type == "cuda")


def machine_choices(precision: str, augment_on: str, device: torch.device) -> dict:
    """What this machine made of the settings that depend on it, and what decided it (run_info.json)."""
    flags = cpu_flags()
    return {"cpu": cpu_model_name(), "torch_threads": torch.get_num_threads(),
            "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "cpu_bf16_instructions": [flag for flag in ("amx_bf16", "avx512_bf16") if flag in flags],
            "cpu_kernels": torch.backends.cpu.get_cpu_capability(),
            "bf16_autocast": use_bf16(precision, device),
            "augment_on_device": augments_on_device(augment_on, device)}


def bf16_is_fast(device: torch.device, flags: frozenset[str] | None = None, kernels: str | None = None) -> bool:
    """Whether bf16 autocast is the faster choice on this device (train.precision: auto).

    On CPUs, where measured (README, "Which precision `auto` picks"): with AMX tiles, and on AMD
    CPUs with AVX512-BF16 (an AMD EPYC, family 25 model 17: WRN-28-2's step 316-356 ms in bf16
    against 599-613 ms in fp32 at B = 16). Not on a Xeon with AVX512-BF16 but AMX switched off
    (715 ms in bf16 against 485-521 ms in fp32), nor where bf16 is only emulated on plain AVX-512
    or AVX2, though torch's own check (mkldnn bf16 support) says yes there. `kernels` is the level
    torch's CPU kernels run at (torch.backends.cpu.get_cpu_capability()): capped below AVX-512
    (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA), the same EPYC took 9.3-10.2 s a bf16 step against
    0.69-0.80 s in fp32, whatever the flags say.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    flags = cpu_flags() if flags is None else flags  # /proc/cpuinfo's words: the vendor_id is one of them
    kernels = torch.backends.cpu.get_cpu_capability() if kernels is None else kernels
    has_bf16_units = "amx_bf16" in flags or ("AuthenticAMD" in flags and "avx512_bf16" in flags)
    return device.type == "cpu" and kernels.startswith("AVX512") and has_bf16_units
