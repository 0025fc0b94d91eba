"""Wide residual network WRN-depth-k (Zagoruyko & Komodakis 2016), the backbone of FixMatch
(Sohn et al. 2020): pre-activation basic blocks, BatchNorm momentum 0.001, LeakyReLU(0.1), and
the initialisation of the FixMatch PyTorch port (kekmodel/FixMatch-pytorch).

The codebases whose CIFAR numbers people compare define the network slightly differently;
`WRN_VARIANTS` holds each definition (README, "Protocols").
"""

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

# PyTorch's BN momentum is the weight of the new batch: 0.001 here is TensorFlow's 0.999 decay,
# which FixMatch uses so the running statistics average over ~1000 steps of augmented batches.
BN_MOMENTUM = 0.001
LEAKY_SLOPE = 0.1


@dataclass(frozen=True)
class WRNVariant:
    """How one codebase defines WRN-28-k."""

    # kekmodel's BasicBlock (also USB's and ACR's): a block that changes the shape feeds conv1 the raw
    # input, `conv1(out if equalInOut else x)`, unless it activates before the residual (the first
    # block of the network), and one that keeps it ignores activate_before_residual. Where conv1
    # reads the raw input kekmodel computes bn1 and discards it; we leave that dead BatchNorm out
    # (same outputs and gradients).
    kekmodel_wiring: bool = False
    bn_momentum: float = BN_MOMENTUM
    bn_eps: float = 1e-5
    final_bn_eps: float = 1e-5  # the BatchNorm before pooling
    stem_bias: bool = False     # the first 3x3 conv has a bias


WRN_VARIANTS = {
    # TensorFlow FixMatch's wiring (every conv1 sees the pre-activated input), kekmodel's BatchNorm.
    "default": WRNVariant(),
    "kekmodel": WRNVariant(kekmodel_wiring=True),  # also ACR's (the same file)
    "usb": WRNVariant(kekmodel_wiring=True, final_bn_eps=1e-3, stem_bias=True),
    "daso": WRNVariant(bn_momentum=0.1),  # PyTorch's default BatchNorm
}


class BasicBlock(nn.Module):
    """Pre-activation residual block: BN-LReLU-conv3x3(stride)-BN-LReLU-conv3x3, plus a shortcut.

    The shortcut is the identity when the shape is kept, else a 1x1 conv (stride `stride`).
    `activate_before_residual` (first block of the network only) feeds the shortcut with the
    activated input instead of the raw one, as the stem output has not been normalised yet.
    In the kekmodel wiring (WRNVariant), a block that changes the shape without activating before
    the residual feeds conv1 the raw input too and has no bn1.

    x [B, in_channels, H, W] -> [B, out_channels, H / stride, W / stride]
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, activate_before_residual: bool = False,
                 variant: WRNVariant = WRNVariant()):
        super().__init__()
        shape_changes = in_channels != out_channels or stride != 1
        if variant.kekmodel_wiring and not shape_changes:
            activate_before_residual = False  # kekmodel: `x if self.equalInOut else ...` reads the raw x
        self.raw_input_to_conv1 = variant.kekmodel_wiring and shape_changes and not activate_before_residual
        if not self.raw_input_to_conv1:
            self.bn1 = nn.BatchNorm2d(in_channels, momentum=variant.bn_momentum, eps=variant.bn_eps)
            self.relu1 = nn.LeakyReLU(LEAKY_SLOPE, inplace=True)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels, momentum=variant.bn_momentum, eps=variant.bn_eps)
        self.relu2 = nn.LeakyReLU(LEAKY_SLOPE, inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.activate_before_residual = activate_before_residual
        self.shortcut = (
            nn.Conv2d(in_channels, out_channels, 1, stride=stride, padding=0, bias=False) if shape_changes else None
        )

    def forward(self, x: Tensor) -> Tensor:
        # The default follows the FixMatch TensorFlow code: the residual branch always sees the
        # pre-activated input. The PyTorch port feeds the raw input to conv1 of the first block of
        # groups 2 and 3 (variant kekmodel); both are kept, as people compare numbers from both.
        activated = x if self.raw_input_to_conv1 else self.relu1(self.bn1(x))
        residual_input = activated if self.activate_before_residual else x
        out = self.conv2(self.relu2(self.bn2(self.conv1(activated))))
        shortcut = residual_input if self.shortcut is None else self.shortcut(residual_input)
        return shortcut + out


class WideResNet(nn.Module):
    """WRN-depth-k for small images: a 3x3 stem, three groups of (depth - 4) / 6 basic blocks
    with channels [16k, 32k, 64k] (strides 1, 2, 2), BN-LReLU, global average pooling, then an
    optional dropout and the linear classifier.

    forward(x [B, C, H, W], H, W >= 8) -> logits [B, num_classes]
    forward_features(x) -> [B, 64k], the pooled penultimate features fed to `self.classifier`.
    """

    def __init__(
        self,
        num_classes: int,
        depth: int = 28,
        widen_factor: int = 2,
        in_channels: int = 3,
        dropout: float = 0.0,
        variant: str = "default",
    ):
        super().__init__()
        if variant not in WRN_VARIANTS:
            raise ValueError(f"unknown WRN variant {variant!r}; expected one of {', '.join(WRN_VARIANTS)}")
        spec = WRN_VARIANTS[variant]
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"WideResNet depth must be 6n + 4 with n >= 1, got {depth}")
        blocks_per_group = (depth - 4) // 6
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]

        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, stride=1, padding=1, bias=spec.stem_bias)
        self.block1 = _make_group(channels[0], channels[1], blocks_per_group, 1, spec, activate_before_residual=True)
        self.block2 = _make_group(channels[1], channels[2], blocks_per_group, 2, spec)
        self.block3 = _make_group(channels[2], channels[3], blocks_per_group, 2, spec)
        self.bn = nn.BatchNorm2d(channels[3], momentum=spec.bn_momentum, eps=spec.final_bn_eps)
        self.relu = nn.LeakyReLU(LEAKY_SLOPE, inplace=True)
        # Dropout on the pooled features only (FixMatch's TF code; later reused for MC Dropout).
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(channels[3], num_classes)
        init_fixmatch_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        """x [B, C, H, W] -> pooled features [B, 64k]."""
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn(out))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)

    def forward(self, x: Tensor) -> Tensor:
        """x [B, C, H, W] -> logits [B, num_classes]."""
        return self.classifier(self.dropout(self.forward_features(x)))


def _make_group(
    in_channels: int, out_channels: int, num_blocks: int, stride: int, variant: WRNVariant,
    activate_before_residual: bool = False,
) -> nn.Sequential:
    """One resolution stage: the first block changes width/stride, the rest keep the shape."""
    blocks = [BasicBlock(in_channels, out_channels, stride, activate_before_residual, variant)]
    blocks += [BasicBlock(out_channels, out_channels, 1, variant=variant) for _ in range(num_blocks - 1)]
    return nn.Sequential(*blocks)


def init_fixmatch_weights(model: nn.Module) -> None:
    """FixMatch PyTorch-port initialisation: He (fan_out) convs, unit BN, Xavier classifier."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="leaky_relu")
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.xavier_normal_(module.weight)
            nn.init.zeros_(module.bias)
