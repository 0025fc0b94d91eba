"""Networks from torchvision and timm behind the Classifier interface, and loading a local state_dict into
any registered network (ImageNet weights included: a head of another class count is left out). Nothing
here downloads: the networks start from random weights, or from the file `model.weights` names.
"""

from __future__ import annotations

import difflib
import functools
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from debiaspl.errors import UserError, first_line

LIBRARIES = ("torchvision", "timm")
_log = logging.getLogger("debiaspl.models")
_MAX_KEYS_SHOWN = 5


class ExternalClassifier(nn.Module):
    """A torchvision or timm network as a Classifier: `body` is the library's network with its final
    nn.Linear replaced by nn.Identity, `classifier` is that Linear, and `dropout` replaces the dropout
    the library put just before it (if any), at the rate model.dropout.

    forward(x [B, C, H, W]) -> logits [B, num_classes] = classifier(dropout(forward_features(x)))
    forward_features(x) -> [B, D], what the library's network fed its final Linear.
    `native_head` is where that Linear sits in the library's own state_dict keys ("fc", "heads.head").
    """

    def __init__(self, body: nn.Module, classifier: nn.Linear, dropout: float, native_head: str):
        super().__init__()
        self.body = body
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = classifier
        self.native_head = native_head

    def forward_features(self, x: Tensor) -> Tensor:
        """x [B, C, H, W] -> pooled features [B, D]."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        """x [B, C, H, W] -> logits [B, num_classes]."""
        return self.classifier(self.dropout(self.forward_features(x)))

    def own_key(self, native: str) -> str:
        """The key (or module prefix, "" for the root) of this wrapper for one of the library network's."""
        head = self.native_head
        if native == head or native.startswith(head + "."):
            return "classifier" + native[len(head):]
        return "body." + native if native else "body"

    def native_key(self, own: str) -> str:
        """The inverse of own_key, for messages about a library network's file."""
        if own == "classifier" or own.startswith("classifier."):
            return self.native_head + own[len("classifier"):]
        return own.removeprefix("body.")


# ---- names ---------------------------------------------------------------------------------------


def split_name(name: str) -> tuple[str, str] | None:
    """("torchvision", "resnet50") for "torchvision:resnet50"; None for a name without a library prefix."""
    library, colon, architecture = name.partition(":")
    return (library, architecture) if colon else None


def _import_timm():
    try:
        import timm
    except ImportError:
        return None
    return timm


@functools.cache
def library_names(library: str) -> tuple[str, ...]:
    """Every architecture name the library (installed) builds; () when it is not installed."""
    if library == "torchvision":
        from torchvision import models
        return tuple(models.list_models(module=models))
    timm = _import_timm() if library == "timm" else None
    return tuple(timm.list_models()) if timm is not None else ()


def is_external_name(name: str) -> bool:
    """Whether `name` is torchvision:ARCH or timm:ARCH[.TAG] for an architecture the library has."""
    parts = split_name(name)
    if parts is None or parts[0] not in LIBRARIES:
        return False
    library, architecture = parts
    if library == "timm":
        timm = _import_timm()
        if timm is None or not architecture or not timm.is_model(architecture):
            return False
        # is_model checks only the part before a ".tag"; create_model refuses a tag the architecture lacks
        return "." not in architecture or architecture in timm.list_pretrained(architecture)
    return architecture in library_names(library)


def explain_unknown(name: str, builtins: list[str]) -> str:
    """Why `name` is no model, what the names are, and the closest one."""
    listing = (f"choose a built-in ({', '.join(builtins)}), torchvision:NAME (a torchvision classification "
               f"network, e.g. torchvision:resnet50) or timm:NAME (a timm model, when timm is installed)")
    parts = split_name(name)
    if parts is None:
        candidates = {b: b for b in builtins} | {a: f"torchvision:{a}" for a in library_names("torchvision")}
    elif parts[0] not in LIBRARIES:
        return f"{parts[0]!r} is not a model library: {listing}"
    elif parts[0] == "timm" and _import_timm() is None:
        return f"{name} needs timm, which is not installed: pip install timm (or {listing.removeprefix('choose ')})"
    elif parts[0] == "timm" and "." in parts[1] and _import_timm().is_model(parts[1].partition(".")[0]):
        architecture, _, tag = parts[1].partition(".")
        tags = [known.partition(".")[2] for known in _import_timm().list_pretrained(f"{architecture}.*")]
        return f"timm's {architecture} has no tag {tag!r}: " + (
            f"its tags are {', '.join(tags)}" if tags else f"it has none; write timm:{architecture}")
    else:
        library = parts[0]
        candidates = {a: f"{library}:{a}" for a in library_names(library)}
        listing = f"{library} has no architecture {parts[1]!r}; {listing}"
    close = difflib.get_close_matches(parts[1] if parts else name, list(candidates), n=1)
    return listing + (f" (did you mean {candidates[close[0]]!r}?)" if close else "")


# ---- building ------------------------------------------------------------------------------------


def build_external(name: str, num_classes: int, in_channels: int = 3, dropout: float = 0.0) -> ExternalClassifier:
    """A randomly initialised torchvision:ARCH or timm:ARCH as an ExternalClassifier. UserError when the
    architecture has no final nn.Linear to take as the classifier (torchvision's squeezenet)."""
    library, architecture = split_name(name)
    if library == "timm":
        network = _timm_network(architecture, num_classes, in_channels)
    else:
        network = _torchvision_network(architecture, num_classes, in_channels)
    head_name = _final_linear(network, name, num_classes)
    head = network.get_submodule(head_name)
    _drop_dropout_before(network, head_name)
    if library == "timm":
        before = set(network.state_dict())
        network.reset_classifier(0)  # timm's way to make forward return the pooled features
        removed = before - set(network.state_dict())
        if removed != {f"{head_name}.weight", f"{head_name}.bias"} & before:
            raise UserError(f"model.name = {name!r}: its reset_classifier(0) removes more than its final Linear "
                            f"({', '.join(sorted(removed))}); choose another architecture")
    else:
        network.set_submodule(head_name, nn.Identity())
    return ExternalClassifier(network, head, dropout, head_name)


def _torchvision_network(architecture: str, num_classes: int, in_channels: int) -> nn.Module:
    from torchvision import models

    # Their auxiliary heads would make the training-mode forward return a tuple.
    extra = {"aux_logits": False, "init_weights": True} if architecture in ("googlenet", "inception_v3") else {}
    network = models.get_model(architecture, weights=None, num_classes=num_classes, **extra)
    if in_channels != 3:
        stem = _first_conv(network)
        conv = network.get_submodule(stem) if stem else None
        if conv is None or conv.in_channels != 3 or conv.groups != 1:
            raise UserError(f"model.name = 'torchvision:{architecture}': cannot adapt its first layer to "
                            f"{in_channels} input channels; choose another architecture")
        new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                        bias=conv.bias is not None, padding_mode=conv.padding_mode)
        # torchvision's CNNs initialise their convolutions so; the rest of the network keeps its own init
        nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
        if new.bias is not None:
            nn.init.zeros_(new.bias)
        network.set_submodule(stem, new)
    return network


def _timm_network(architecture: str, num_classes: int, in_channels: int) -> nn.Module:
    timm = _import_timm()
    if timm is None:
        raise UserError(f"model.name = 'timm:{architecture}' needs timm, which is not installed: pip install timm")
    return timm.create_model(architecture, pretrained=False, num_classes=num_classes, in_chans=in_channels)


def _final_linear(network: nn.Module, name: str, num_classes: int) -> str:
    """The name of the network's last nn.Linear, which must produce the num_classes logits."""
    linears = [n for n, m in network.named_modules() if isinstance(m, nn.Linear)]
    if not linears or network.get_submodule(linears[-1]).out_features != num_classes:
        raise UserError(f"model.name = {name!r}: this network has no final nn.Linear producing the logits (e.g. "
                        f"squeezenet's classifier is a 1x1 convolution), so it has no features for the classifier "
                        f"to read; choose another architecture")
    return linears[-1]


def _drop_dropout_before(network: nn.Module, head_name: str) -> None:
    """Replace a dropout registered just before the head in the same parent by nn.Identity: the
    wrapper's own dropout (model.dropout) takes its place."""
    parent_name, _, local = head_name.rpartition(".")
    parent = network.get_submodule(parent_name)
    names = [n for n, _ in parent.named_children()]
    position = names.index(local)
    if position > 0 and isinstance(getattr(parent, names[position - 1]), nn.Dropout):
        setattr(parent, names[position - 1], nn.Identity())


def _first_conv(model: nn.Module) -> str | None:
    return next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)


# ---- weights -------------------------------------------------------------------------------------


AUXILIARY_HEADS = ("AuxLogits.", "aux1.", "aux2.")  # torchvision's inception_v3 and googlenet


def read_state_dict(path: str) -> dict[str, Tensor]:
    """The state_dict in `path` (torch.load with weights_only): the file's dict itself, or its
    "state_dict" or "model" entry. UserError naming the file when it is missing or holds no state_dict."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"model.weights = {path!r}: no such file") from None
    except Exception as exc:  # torch raises many types here (zip, pickle, weights_only refusals)
        raise UserError(f"model.weights = {path!r}: cannot read it as a PyTorch state_dict "
                        f"({first_line(exc, limit=None)})") from None
    for entry in ("state_dict", "model"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(entry), Mapping):
            loaded = loaded[entry]
            break
    if not isinstance(loaded, Mapping) or not loaded or not all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in loaded.items()):
        raise UserError(f"model.weights = {path!r}: not a state_dict (a dict of tensors by parameter name, or a "
                        f"dict with one under 'state_dict' or 'model')")
    return loaded


def load_weights(model: nn.Module, path: str, name: str) -> None:
    """Load the state_dict in `path` into `model` (built as model.name `name`), in place.

    A library network's own keys ("fc.weight") load into an ExternalClassifier. A classifier of another
    class count (ImageNet's 1000) is left at its random weights, with one log line naming the keys; a
    first convolution saved for 3 channels is adapted to the model's (timm's rule: summed for 1 channel,
    else repeated and scaled by 3 / C). Any other missing, unexpected or misshapen key is a UserError.
    """
    state = read_state_dict(path)
    native = isinstance(model, ExternalClassifier) and not all(k.startswith(("body.", "classifier.")) for k in state)
    state = _renamed(state, model.own_key if native else str)
    shown = model.native_key if native else str  # messages name the keys as the file has them
    expected = model.state_dict()
    misshapen = [k for k in state if k in expected and state[k].shape != expected[k].shape]
    skipped = _skip_other_head(state, expected, misshapen)
    if skipped:
        _log.warning("debiaspl: model.weights %s: left out %s (%d classes in the file, %d in this run); the "
                     "classifier starts from random weights", path, ", ".join(map(shown, skipped)),
                     state[skipped[0]].shape[0], expected[skipped[0]].shape[0])
        for key in skipped:
            del state[key]
    auxiliary = [k for k in state if k not in expected and shown(k).startswith(AUXILIARY_HEADS)]
    if auxiliary:  # googlenet's and inception_v3's training-only heads, which debiaspl builds without
        _log.warning("debiaspl: model.weights %s: left out %d keys of the auxiliary heads (%s, ...), which this "
                     "network is built without", path, len(auxiliary), shown(auxiliary[0]))
        for key in auxiliary:
            del state[key]
    stem = _first_conv(model)
    if stem and f"{stem}.weight" in misshapen and _adapt_stem(state, expected, f"{stem}.weight"):
        _log.warning("debiaspl: model.weights %s: %s adapted from 3 input channels to %d", path,
                     shown(f"{stem}.weight"), expected[f"{stem}.weight"].shape[1])
    bad_shapes = [f"{shown(k)} ({list(state[k].shape)} in the file, {list(expected[k].shape)} in the model)"
                  for k in misshapen if k in state and state[k].shape != expected[k].shape]
    if bad_shapes:
        raise UserError(f"model.weights = {path!r} does not fit {name}: {_first(bad_shapes, 'misshapen keys')}")
    if getattr(state, "_metadata", None) is None:  # a file saved as a plain dict: the model's own module
        state._metadata = getattr(expected, "_metadata", None)  # versions (mnasnet refuses to load without)
    try:
        result = model.load_state_dict(state, strict=False)
    except (RuntimeError, ValueError) as exc:
        raise UserError(f"model.weights = {path!r} does not fit {name}: {first_line(exc)}") from None
    missing = [shown(k) for k in result.missing_keys if k not in skipped]
    unexpected = [shown(k) for k in result.unexpected_keys]
    problems = [_first(keys, what) for keys, what in ((missing, "missing keys"), (unexpected, "unexpected keys"))
                if keys]
    if problems:
        raise UserError(f"model.weights = {path!r} does not fit {name}: {'; '.join(problems)}")


def _renamed(state: Mapping[str, Tensor], rename: Callable[[str], str]) -> OrderedDict:
    """A copy of `state` with its keys renamed, and the per-module versions torch keeps beside them
    (`_metadata`, by module prefix), which tell old BatchNorm files and the like how to load."""
    renamed = OrderedDict((rename(k), v) for k, v in state.items())
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:
        renamed._metadata = OrderedDict((rename(k), v) for k, v in metadata.items())
    return renamed


def _skip_other_head(state: Mapping[str, Tensor], expected: Mapping[str, Tensor], misshapen: list[str]) -> list[str]:
    """["classifier.weight", "classifier.bias"] when the classifier differs in its class count only."""
    keys = [k for k in ("classifier.weight", "classifier.bias") if k in expected]
    if not keys or not all(k in misshapen for k in keys):
        return []
    same_inputs = all(state[k].shape[1:] == expected[k].shape[1:] for k in keys)
    same_count = len({state[k].shape[0] for k in keys}) == 1
    return keys if same_inputs and same_count else []


def _adapt_stem(state: dict[str, Tensor], expected: Mapping[str, Tensor], key: str) -> bool:
    """Adapt a [O, 3, k, k] first-convolution weight to the model's C input channels, in `state`."""
    weight, target = state[key], expected[key].shape
    if weight.dim() != 4 or weight.shape[1] != 3 or weight.shape[:1] + weight.shape[2:] != target[:1] + target[2:]:
        return False
    channels = target[1]
    if channels == 1:
        state[key] = weight.sum(dim=1, keepdim=True)
    else:
        state[key] = weight.repeat(1, (channels + 2) // 3, 1, 1)[:, :channels] * (3 / channels)
    return True


def _first(keys: list[str], what: str) -> str:
    more = f" and {len(keys) - _MAX_KEYS_SHOWN} more" if len(keys) > _MAX_KEYS_SHOWN else ""
    return f"{what} {', '.join(keys[:_MAX_KEYS_SHOWN])}{more}"
