"""Which torch device a config's `train.device` string means on this machine."""

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
