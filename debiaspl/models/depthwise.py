"""Depthwise convolutions kept out of CPU bf16 autocast.

On the CPU (torch 2.14.1, seen on an AMD EPYC with AVX512-BF16), a bf16 depthwise convolution in
channels_last can leave the weight gradient of kernel taps that never touch the image (only padding: a
3x3 convolution on a 1x1 feature map, which torchvision's and timm's ImageNet networks reach on 8-16 px
images) unwritten: those entries hold whatever the memory held, now and then NaN. fp32, and bf16 in
NCHW, write them as zeros (benchmarks/bf16_depthwise_grad.py). These convolutions are a small share of
the arithmetic, so they run in fp32 under CPU autocast.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class Float32DepthwiseConv2d(nn.Conv2d):
    """An nn.Conv2d with groups == in_channels that computes in fp32 under CPU autocast; elsewhere it is
    the plain convolution. Same parameters and state_dict keys, so weights and checkpoints load unchanged."""

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float())
        return super().forward(x)


def is_depthwise(module: nn.Module) -> bool:
    return type(module) is nn.Conv2d and module.groups > 1 and module.groups == module.in_channels


def keep_depthwise_in_float32(model: nn.Module) -> int:
    """Turn every plain depthwise nn.Conv2d of `model` into a Float32DepthwiseConv2d, in place (subclasses,
    such as timm's padding-same convolution, are left alone); the number changed."""
    changed = 0
    for module in model.modules():
        if is_depthwise(module):
            module.__class__ = Float32DepthwiseConv2d
            changed += 1
    return changed
