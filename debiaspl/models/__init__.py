"""Network registry: the built-in networks by config name, plus torchvision:NAME and timm:NAME, and
`build_model` to look one up with a helpful error and start it from a local state_dict. WideResNet-28-k
(Zagoruyko & Komodakis 2016) as in FixMatch (Sohn et al. 2020), and a small CNN for CPU runs.
"""

from collections.abc import Iterator, MutableMapping
from functools import partial
from typing import Callable, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from debiaspl.errors import UserError, first_line
from debiaspl.models.depthwise import keep_depthwise_in_float32
from debiaspl.models.ema import ModelEMA
from debiaspl.models.external import ExternalClassifier, build_external, explain_unknown, is_external_name, load_weights
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


class ModelRegistry(MutableMapping[str, Callable[..., Classifier]]):
    """The built-in networks by name, and every torchvision:NAME / timm:NAME the installed libraries
    build. Iterating (and len) gives the built-ins only; `in` and lookup take the prefixed names too,
    so a config's model.name is checked against the libraries when it loads. A network of your own
    is one assignment: MODELS["my_net"] = constructor (README, "Adding an algorithm, a hook, a dataset")."""

    def __init__(self, builtins: dict[str, Callable[..., Classifier]]):
        self.builtins = builtins

    def __getitem__(self, name: str) -> Callable[..., Classifier]:
        if name in self.builtins:
            return self.builtins[name]
        if is_external_name(name):
            return partial(build_external, name)
        raise KeyError(name)

    def __setitem__(self, name: str, constructor: Callable[..., Classifier]) -> None:
        if is_external_name(name) or ":" in name:
            raise ValueError(f"{name!r}: names with a ':' are the libraries' (torchvision:NAME, timm:NAME)")
        self.builtins[name] = constructor

    def __delitem__(self, name: str) -> None:
        del self.builtins[name]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self.builtins or is_external_name(name))

    def __iter__(self) -> Iterator[str]:
        return iter(self.builtins)

    def __len__(self) -> int:
        return len(self.builtins)

    def unknown_message(self, name: str) -> str:
        """What the config loader says about a name that is none of these: the built-ins, the prefixes
        and the closest name (inside the library the prefix names)."""
        return explain_unknown(name, list(self.builtins))

    def describe(self) -> str:
        """The choices as the config reference lists them."""
        return " / ".join([*self.builtins, "torchvision:NAME", "timm:NAME"])


# Each constructor takes (num_classes, in_channels, dropout) as keywords.
MODELS = ModelRegistry({
    "wrn28_2": partial(WideResNet, depth=28, widen_factor=2),  # CIFAR-10 in FixMatch, ~1.47M params
    "wrn28_8": partial(WideResNet, depth=28, widen_factor=8),  # CIFAR-100 in FixMatch, ~23.4M params
    "small_cnn": SmallCNN,  # CPU runs and tests, ~0.1M params
    "small_cnn_gn": partial(SmallCNN, norm="group"),  # the same with GroupNorm: batch-independent
})


def build_model(name: str, num_classes: int, in_channels: int = 3, dropout: float = 0.0,
                wrn_variant: str = "default", weights: str = "") -> nn.Module:
    """A `MODELS[name]` for `num_classes` classes and `in_channels` channels, with dropout rate
    `dropout` before the classifier; a WideResNet is built as `wrn_variant` says (WRN_VARIANTS), other
    networks have no variants. Freshly initialised, or loaded from the local state_dict file `weights`
    (see external.load_weights; UserError when it does not fit). Raises ValueError for an unknown name.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: {MODELS.unknown_message(name)}")
    constructor = MODELS[name]
    is_wrn = getattr(constructor, "func", constructor) is WideResNet
    variant = {"variant": wrn_variant} if is_wrn else {}
    model = constructor(num_classes=num_classes, in_channels=in_channels, dropout=dropout, **variant)
    keep_depthwise_in_float32(model)  # CPU bf16 leaves some of their weight gradients unwritten (depthwise.py)
    if weights:
        load_weights(model, weights, name)
    return model


def check_takes_images(model: nn.Module, image_shape: tuple[int, int, int], name: str) -> None:
    """One forward pass of two blank images in eval mode, without gradients: a network that cannot take
    the data's image size (a ViT fixed at 224 px, AlexNet's pooling on 8 px) is a UserError naming
    model.name before a run folder is made, not a traceback from the first training step."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(2, *image_shape, device=next(model.parameters()).device))
    except (RuntimeError, AssertionError, ValueError, IndexError) as exc:
        channels, height, width = image_shape
        raise UserError(f"model.name = {name!r} does not take the data's {channels} x {height} x {width} images "
                        f"({first_line(exc)}); set data.image_size to a size it takes, or choose another architecture") from None
    finally:
        model.train(was_training)


__all__ = ["MODELS", "WRN_VARIANTS", "Classifier", "ExternalClassifier", "ModelEMA", "ModelRegistry", "SmallCNN",
           "WideResNet", "build_model", "check_takes_images"]
