"""SGD with FixMatch's parameter groups and learning-rate schedule (Sohn et al. 2020, Sec. 4)."""

import math

import torch
from torch import nn

from debiaspl.config import OptimConfig


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.SGD:
    """Nesterov SGD; weight decay on weights only, not on biases and normalisation parameters, unless
    `config.decay_norm_and_bias` (DASO decays everything)."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            is_norm = isinstance(module, nn.modules.batchnorm._NormBase | nn.GroupNorm | nn.LayerNorm)
            skip = (is_norm or name == "bias") and not config.decay_norm_and_bias
            (no_decay if skip else decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)


def lr_factor(step: int, total_steps: int, schedule: str) -> float:
    """Multiplier of the base lr at `step`: cos(7 pi t / (16 T)) for FixMatch's cosine decay."""
    if schedule == "constant":
        return 1.0
    return math.cos(7.0 * math.pi * step / (16.0 * total_steps))


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, schedule: str) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, schedule))
