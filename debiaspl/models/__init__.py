"""Network registry: a plain dict from config name to constructor, and `build_model` to look one
up with a helpful error. WideResNet-28-k (Zagoruyko & Komodakis 2016) as in FixMatch (Sohn et al.
2020), and a small CNN for CPU runs.
"""

import difflib
from functools import partial
from typing import Callable, Protocol, runtime_checkable

from torch import Tensor, nn

from debiaspl.models.ema import ModelEMA
from debiaspl.models.small_cnn import SmallCNN
from debiaspl.models.wide_resnet import WRN_VARIANTS, WideResNet


@runtime_checkable
class Classifier(Protocol):
    """What every registered model provides (the trainer, TracIn and hooks rely on it).

    forward(x [B, C, H, W]) -> logits [B, num_classes] = classifier(dropout(forward_features(x))).
    """

    classifier: nn.Linear  # [D] -> [num_classes], the last layer
    dropout: nn.Module     # nn.Dropout, or nn.Identity when the rate is 0

    def forward_features(self, x: Tensor) -> Tensor:
        """x [B, C, H, W] -> pooled penultimate features [B, D]."""
        ...

    def forward(self, x: Tensor) -> Tensor:
        """x [B, C, H, W] -> logits [B, num_classes]."""
        ...


# Each constructor takes (num_classes, in_channels, dropout) as keywords.
MODELS: dict[str, Callable[..., Classifier]] = {
    "wrn28_2": partial(WideResNet, depth=28, widen_factor=2),  # CIFAR-10 in FixMatch, ~1.47M params
    "wrn28_8": partial(WideResNet, depth=28, widen_factor=8),  # CIFAR-100 in FixMatch, ~23.4M params
    "small_cnn": SmallCNN,  # CPU runs and tests, ~0.1M params
    "small_cnn_gn": partial(SmallCNN, norm="group"),  # the same with GroupNorm: batch-independent
}


def build_model(name: str, num_classes: int, in_channels: int = 3, dropout: float = 0.0,
                wrn_variant: str = "default") -> nn.Module:
    """A freshly initialised `MODELS[name]` for `num_classes` classes and `in_channels` channels,
    with dropout rate `dropout` before the classifier; a WideResNet is built as `wrn_variant` says
    (WRN_VARIANTS), other networks have no variants. Raises ValueError for an unknown name.
    """
    if name not in MODELS:
        message = f"unknown model {name!r}; choose one of: {', '.join(sorted(MODELS))}"
        close = difflib.get_close_matches(name, MODELS, n=1)
        if close:
            message += f" (did you mean {close[0]!r}?)"
        raise ValueError(message)
    constructor = MODELS[name]
    is_wrn = getattr(constructor, "func", constructor) is WideResNet
    variant = {"variant": wrn_variant} if is_wrn else {}
    return constructor(num_classes=num_classes, in_channels=in_channels, dropout=dropout, **variant)


__all__ = ["MODELS", "WRN_VARIANTS", "Classifier", "ModelEMA", "SmallCNN", "WideResNet", "build_model"]
