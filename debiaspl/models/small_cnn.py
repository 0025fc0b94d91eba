"""A small, fast CNN for CPU runs and tests; not from a paper. It keeps the WRN's interface
(forward_features + classifier, optional dropout before it) and LeakyReLU, but not FixMatch's BN
momentum: see SHORT_RUN_BN_MOMENTUM.
"""

from torch import Tensor, nn
from torch.nn import functional as F

from debiaspl.models.wide_resnet import LEAKY_SLOPE, init_fixmatch_weights

# FixMatch's 0.001 suits 2^18-step runs; over the few thousand steps of a CPU run the running
# statistics would still be mostly their initial values (0.999^1000 = 37%), and every evaluation
# in eval mode would be off. PyTorch's default converges within a few dozen steps.
SHORT_RUN_BN_MOMENTUM = 0.1

CHANNELS = (32, 64, 128)
# Pool between blocks only while the map is at least this large, so 8x8 inputs still reach the
# last block with a 2x2 map instead of an empty one.
MIN_POOL_SIZE = 4


def _norm_layer(norm: str, channels: int) -> nn.Module:
    """BatchNorm, or GroupNorm (8 channels a group), which does not depend on the batch: a run split
    over several processes then computes exactly what one process would."""
    if norm == "batch":
        return nn.BatchNorm2d(channels, momentum=SHORT_RUN_BN_MOMENTUM)
    if norm == "group":
        return nn.GroupNorm(channels // 8, channels)
    raise ValueError(f"unknown norm {norm!r}; choose batch or group")


class SmallCNN(nn.Module):
    """Three conv3x3-BN-LReLU blocks (32/64/128 channels) with 2x2 max-pooling between them,
    global average pooling, optional dropout and a linear classifier (~0.1M parameters).

    forward(x [B, C, H, W], H, W >= 8) -> logits [B, num_classes]
    forward_features(x) -> [B, 128], the pooled penultimate features fed to `self.classifier`.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, dropout: float = 0.0, norm: str = "batch"):
        super().__init__()
        widths = (in_channels, *CHANNELS)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),  # bias is redundant before the norm
                _norm_layer(norm, c_out),
                nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
            )
            for c_in, c_out in zip(widths[:-1], widths[1:])
        )
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(CHANNELS[-1], num_classes)
        init_fixmatch_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        """x [B, C, H, W] -> pooled features [B, 128]."""
        for i, block in enumerate(self.blocks):
            if i > 0 and min(x.shape[-2:]) >= MIN_POOL_SIZE:
                x = F.max_pool2d(x, 2)
            x = block(x)
        return x.mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        """x [B, C, H, W] -> logits [B, num_classes]."""
        return self.classifier(self.dropout(self.forward_features(x)))
