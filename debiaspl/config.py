"""The experiment schema: frozen, typed dataclasses whose defaults are the paper's recipe.

An experiment YAML holds only differences from these defaults (optionally on top of a `base:`
file); `load_experiment` validates everything before anything runs and raises `ConfigError`
naming the dotted key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from debiaspl.errors import UserError


class ConfigError(UserError):
    """An experiment file or override that does not fit the schema."""


def option(default: Any, doc: str, *, ge: float | None = None, gt: float | None = None,
           le: float | None = None, lt: float | None = None) -> Any:
    """A config field with its documentation and numeric bounds (checked on load)."""
    return field(default=default, metadata={"doc": doc, "ge": ge, "gt": gt, "le": le, "lt": lt})


DatasetName = Literal["cifar10", "cifar100", "imagefolder", "digits"]
ModelName = Literal["wrn28_2", "wrn28_8", "small_cnn", "small_cnn_gn"]
AlgorithmName = Literal["fixmatch", "debiaspl"]


@dataclass(frozen=True)
class DataConfig:
    dataset: DatasetName = option("cifar10", "which data: torchvision CIFAR-10/100, an ImageFolder tree (root/train/CLASS/*, root/test/CLASS/*), or scikit-learn's bundled 8x8 digits (offline)")
    root: str = option("data", "folder holding the dataset (CIFAR is downloaded here when absent)")
    download: bool = option(True, "download CIFAR into `root` when it is not there")
    num_labeled_head: int = option(1500, "N1: labeled images of the most frequent class", ge=1)
    labeled_imbalance: float = option(100.0, "gamma_l: ratio of the labeled head to tail class count", ge=1)
    num_unlabeled_head: int = option(3000, "M1: unlabeled images of the most frequent class (0: unlabeled = the rest of the train set)", ge=0)
    unlabeled_imbalance: float = option(100.0, "gamma_u: 1 = uniform unlabeled set, negative = reversed order (tail classes most frequent)")
    split_seed: int = option(0, "seed of the labeled/unlabeled draw (separate from train.seed so runs share a split)", ge=0)
    strong_augment: Literal["fixmatch", "usb"] = option("fixmatch", "RandAugment variant of the strong view: FixMatch's (2 ops, random magnitude, p=0.5) or USB's (3 ops)")
    num_workers: int = option(0, "background processes that gather and augment batches (0: in the training process, which on few CPU cores is faster: a worker competes with the compute threads)", ge=0)
    augment_on: Literal["auto", "loader", "device"] = option("auto", "where batches are augmented: in the loader (the training process, or its workers), or on the training device after the copy (auto: device on CUDA, loader on CPU); the result is the same")
    label_file: str = option("", "CSV with columns sample_id,label (class name or index): these train-pool images join the labeled set with these labels, e.g. newly annotated ones from `debiaspl select` (a relative path is relative to the working directory)")


@dataclass(frozen=True)
class ModelConfig:
    name: ModelName = option("wrn28_2", "network: WRN-28-2 (CIFAR-10), WRN-28-8 (CIFAR-100), small_cnn (CPU runs), small_cnn_gn (the same with GroupNorm, independent of the batch split across processes)")
    dropout: float = option(0.0, "dropout rate before the classifier", ge=0, lt=1)


@dataclass(frozen=True)
class AlgorithmConfig:
    name: AlgorithmName = option("debiaspl", "fixmatch, or FixMatch + DebiasPL (causal logit debiasing + adaptive margin loss)")
    threshold: float = option(0.95, "FixMatch's tau: confidence a pseudo-label needs to count in the loss", ge=0, le=1)
    unlabeled_weight: float = option(1.0, "lambda_u: weight of the unlabeled loss", ge=0)
    tau: float = option(0.4, "DebiasPL's tau (--tau of the official code): strength of the logit debiasing and of the adaptive margin", ge=0)
    marginal_momentum: float = option(0.999, "DebiasPL's m: momentum of the class-marginal estimate q_hat", ge=0, lt=1)


@dataclass(frozen=True)
class OptimConfig:
    lr: float = option(0.03, "SGD learning rate (eta)", gt=0)
    momentum: float = option(0.9, "SGD momentum", ge=0, lt=1)
    nesterov: bool = option(True, "Nesterov momentum")
    weight_decay: float = option(5e-4, "L2 weight decay, not applied to biases and BatchNorm (FixMatch: 5e-4 CIFAR-10, 1e-3 CIFAR-100)", ge=0)
    schedule: Literal["cosine", "constant"] = option("cosine", "cosine: lr * cos(7 pi t / (16 T)) as in FixMatch")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = option(262144, "T: optimizer steps in the whole run (2^18)", ge=1)
    batch_size: int = option(64, "B: labeled images per step", ge=1)
    unlabeled_ratio: int = option(2, "mu: unlabeled images per step = mu * B", ge=1)
    ema_decay: float = option(0.999, "decay of the weight EMA used for evaluation", ge=0, lt=1)
    ema_warmup: bool = option(True, "EMA decay min(d, (1+t)/(10+t)) so short runs are not dominated by the initial weights")
    seed: int = option(0, "seed of weights, batch order and augmentation", ge=0)
    device: str = option("auto", "auto (cuda when available), cpu, cuda or cuda:N")
    precision: Literal["auto", "fp32", "bf16"] = option("auto", "bf16 autocast of the forward pass (losses and q_hat stay float32); auto: bf16 on CUDA devices that support it and on CPUs with native bf16 instructions (AVX512-BF16 or AMX), fp32 elsewhere")
    channels_last: bool = option(True, "NHWC memory layout for the model and its inputs (faster convolutions with bf16 and on many CPUs)")
    compile: bool = option(False, "torch.compile the model (slow first steps; worth it for long GPU runs)")
    weak_forward: Literal["joint", "separate"] = option("joint", "joint: labeled, weak and strong views in one forward pass with gradients, so BatchNorm sees them together (FixMatch); separate: the weak view in its own pass without gradients (cheaper)")
    deterministic: bool = option(False, "deterministic CUDA kernels (slower), so GPU runs repeat and resume bit for bit as CPU runs do")


@dataclass(frozen=True)
class EvalConfig:
    interval: int = option(1024, "evaluate on the test set every this many steps (and at the end)", ge=1)
    batch_size: int = option(256, "test batch size", ge=1)
    use_ema: bool = option(True, "evaluate the EMA model (FixMatch) rather than the raw weights")


@dataclass(frozen=True)
class LoggingConfig:
    run_dir: str = option("runs", "parent folder of run folders")
    run_name: str = option("", "run folder name under run_dir (empty: the experiment file's name)")
    log_interval: int = option(50, "write training scalars every this many steps (the only host syncs)", ge=1)
    checkpoint_interval: int = option(1024, "write the resumable checkpoint every this many steps (and at the end)", ge=1)
    progress_bar: bool = option(True, "show a tqdm progress bar")
    snapshot_interval: int = option(0, "keep the model weights every this many steps in snapshots/ for `debiaspl influence` (TracIn); 0: none", ge=0)


@dataclass(frozen=True)
class HookConfig:
    """One entry of the `hooks:` list: a hook name from debiaspl.hooks.HOOKS and its validated options."""

    name: str
    options: Any


@dataclass(frozen=True)
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    hooks: tuple[HookConfig, ...] = ()  # analyses that watch training; they never change the weights


# Keys that change how a run executes or reports, never what it learns (beyond the order of float
# roundings): a run may resume under other values of them, and `debiaspl report` puts runs that
# differ only in them (and in their seed) in one row.
EXECUTION_KEYS = frozenset({
    "data.root", "data.download", "data.num_workers", "data.augment_on", "train.device", "train.deterministic",
    "train.compile", "train.channels_last", "eval.batch_size", "hooks",
    *(f"logging.{f.name}" for f in dataclasses.fields(LoggingConfig)),
})

# FixMatch makes pseudo-labels without debiasing and tracks q_hat for monitoring only.
UNUSED_BY_FIXMATCH = frozenset({"algorithm.tau", "algorithm.marginal_momentum"})


def training_settings(flat: dict[str, Any]) -> dict[str, Any]:
    """The keys of a flattened config that decide what a run learns: all but EXECUTION_KEYS and, for
    FixMatch, the DebiasPL keys it ignores. Two runs with equal training settings train the same run."""
    ignored = UNUSED_BY_FIXMATCH if flat.get("algorithm.name") == "fixmatch" else frozenset()
    return {key: value for key, value in flat.items() if key not in EXECUTION_KEYS and key not in ignored}


def flatten(raw: dict, prefix: str = "") -> dict[str, Any]:
    """{'train': {'steps': 1}} -> {'train.steps': 1}; lists (the hooks) stay whole values."""
    keys = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            keys.update(flatten(value, f"{prefix}{key}."))
        else:
            keys[f"{prefix}{key}"] = value
    return keys


# ---------------------------------------------------------------------------------------------
# Loading: files (with `base:`) -> merged dict -> --set overrides -> validated dataclasses.

def load_experiment(path: str | Path, overrides: typing.Sequence[str] = ()) -> ExperimentConfig:
    """Read an experiment file, apply `dotted.key=value` overrides, validate, and fill defaults."""
    path = Path(path)
    raw = _read_with_bases(path, chain=())
    for override in overrides:
        key, value = parse_override(override)
        if _leaf_type(key) is str:  # keep `run_name=2024` or `root=yes` as the text typed
            value = override.partition("=")[2].strip()
        _set_dotted(raw, key, value)
    config = from_dict(raw, source=str(path))
    if not config.logging.run_name:
        config = replace_dotted(config, "logging.run_name", path.stem)
    return config


def parse_override(text: str) -> tuple[str, Any]:
    """'train.steps=100' -> ('train.steps', 100); the value is parsed as YAML (types follow)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected dotted.key=value, e.g. train.steps=1000")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return key.strip(), parsed


def from_dict(raw: dict, source: str = "config") -> ExperimentConfig:
    """Build and validate an ExperimentConfig from a plain nested dict."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    config = _build(ExperimentConfig, raw, prefix="", source=source)
    _check_relations(config, source)
    return config


def to_dict(config: ExperimentConfig) -> dict:
    """Plain nested dicts and lists, in the shape an experiment file has (hooks as flat mappings)."""
    raw = {f.name: dataclasses.asdict(getattr(config, f.name)) for f in dataclasses.fields(config) if f.name != "hooks"}
    raw["hooks"] = [{"name": hook.name, **dataclasses.asdict(hook.options)} for hook in config.hooks]
    return raw


def save_config(config: ExperimentConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


def replace_dotted(config: ExperimentConfig, key: str, value: Any) -> ExperimentConfig:
    """A copy of `config` with one dotted key changed (and validated)."""
    raw = to_dict(config)
    _set_dotted(raw, key, value)
    return from_dict(raw, source=f"setting {key}")


def describe_fields(cls: type = ExperimentConfig, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """(dotted key, type, default, doc) for every leaf field: the README's config reference."""
    rows = []
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        if f.name == "hooks" and cls is ExperimentConfig:
            continue  # documented per hook: describe_fields(HOOKS[name].Options, f"hooks[].")
        if dataclasses.is_dataclass(hint):
            rows += describe_fields(hint, prefix + f.name + ".")
        else:
            rows.append((prefix + f.name, _type_name(hint), f.default, f.metadata.get("doc", "")))
    return rows


def _leaf_type(dotted: str) -> Any:
    """The schema type of a dotted key, or None when the key does not exist."""
    cls: Any = ExperimentConfig
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(cls):
            return None
        cls = typing.get_type_hints(cls).get(part)
    return cls


def _read_with_bases(path: Path, chain: tuple[Path, ...]) -> dict:
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        raise ConfigError(f"{path}: `base:` files form a cycle: {cycle}")
    if not path.is_file():
        hint = f" (named as base by {chain[-1]})" if chain else ""
        raise ConfigError(f"experiment file not found: {path}{hint}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it as UTF-8 text: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base = {base!r}: expected a file name relative to {path.parent}")
    merged = _read_with_bases(path.parent / base, (*chain, resolved))
    _deep_merge(merged, data)
    return merged


def _deep_merge(into: dict, update: dict) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {part} is not a section")
        node = child
    node[leaf] = value


def _build(cls: type, raw: dict, prefix: str, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; allowed: {', '.join(names)}"
            raise ConfigError(f"{source}: unknown key {prefix}{key}{hint}")
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        hint, value, dotted = hints[f.name], raw[f.name], prefix + f.name
        if cls is ExperimentConfig and f.name == "hooks":
            values[f.name] = _build_hooks(value, source)
        elif dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {dotted} must be a section (a mapping), got {value!r}")
            values[f.name] = _build(hint, value, dotted + ".", source)
        else:
            values[f.name] = _check_value(value, hint, f.metadata, dotted, source)
    return cls(**values)


def _build_hooks(entries: Any, source: str) -> tuple[HookConfig, ...]:
    from debiaspl.hooks import HOOKS  # late: hook modules import this one for `option`

    if entries is None:
        return ()
    if not isinstance(entries, list):
        raise ConfigError(f"{source}: hooks must be a list of mappings like `- name: drift`, got {entries!r}")
    hooks, seen = [], set()
    for index, entry in enumerate(entries):
        where = f"hooks[{index}]"
        if not isinstance(entry, dict) or "name" not in entry:
            raise ConfigError(f"{source}: {where} = {entry!r}: expected a mapping with a `name` key")
        options = dict(entry)
        name = options.pop("name")
        if name not in HOOKS:
            close = difflib.get_close_matches(str(name), list(HOOKS), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"{source}: {where}.name = {name!r}: must be one of {', '.join(HOOKS)}{hint}")
        if name in seen:
            raise ConfigError(f"{source}: {where}.name = {name!r}: each hook may be listed once")
        seen.add(name)
        hooks.append(HookConfig(name, _build(HOOKS[name].Options, options, f"{where}.", source)))
    return tuple(hooks)


def _check_relations(config: ExperimentConfig, source: str) -> None:
    """Constraints that a single field's bounds cannot express."""
    if abs(config.data.unlabeled_imbalance) < 1:
        raise ConfigError(f"{source}: data.unlabeled_imbalance = {config.data.unlabeled_imbalance!r}: must satisfy "
                          f"|gamma_u| >= 1 (1 = uniform, negative = reversed order)")
    device = config.train.device
    if not (device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())):
        raise ConfigError(f"{source}: train.device = {device!r}: must be auto, cpu, cuda or cuda:N")


def _check_value(value: Any, hint: Any, meta: typing.Mapping, dotted: str, source: str) -> Any:
    original = value  # errors quote what the user wrote, not our conversion of it

    def fail(allowed: str) -> typing.NoReturn:
        raise ConfigError(f"{source}: {dotted} = {original!r}: {allowed}")

    if get_origin(hint) is Literal:
        choices = get_args(hint)
        if value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            fail(f"must be one of {', '.join(map(str, choices))}" + (f" (did you mean {close[0]}?)" if close else ""))
        return value
    if hint is bool:
        if not isinstance(value, bool):
            fail("must be true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail("must be a whole number")
    elif hint is float:
        # PyYAML reads `3e-4` (no dot) as a string; accept any number spelling float() accepts.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                fail("must be a number")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            fail("must be a finite number")
        value = float(value)
    elif hint is str:
        if not isinstance(value, str):
            fail("must be a string")
    else:  # pragma: no cover - a schema field of a type this loader does not know
        raise TypeError(f"unsupported config type {hint} for {dotted}")
    bounds = {"ge": (float.__ge__, ">="), "gt": (float.__gt__, ">"), "le": (float.__le__, "<="), "lt": (float.__lt__, "<")}
    for name, (compare, symbol) in bounds.items():
        bound = meta.get(name)
        if bound is not None and not compare(float(value), float(bound)):
            fail(f"must be {symbol} {bound:g}")
    return value


def _type_name(hint: Any) -> str:
    if get_origin(hint) is Literal:
        return " / ".join(map(str, get_args(hint)))
    if isinstance(hint, types.UnionType):
        return " / ".join(_type_name(a) for a in get_args(hint))
    return getattr(hint, "__name__", str(hint))
