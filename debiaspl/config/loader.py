"""Loading experiments: files (with `base:`) -> merged dict -> --set overrides (overrides.py) -> validated dataclasses.

`load_experiment` validates everything before anything runs and raises `ConfigError` naming the
dotted key, the value and what is allowed. Algorithm and hook sections are checked against the
options their registries declare, so a key the chosen algorithm or hook does not use is an error.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import operator
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from debiaspl.algorithm import (ALGORITHMS, DEFAULT_ALGORITHM, LAYER_SEPARATOR, LAYERS, parse_algorithm_name,
                                upgrade_legacy_config)
from debiaspl.config.identity import flatten
from debiaspl.config.overrides import ConfigError, apply_override, deep_merge, parse_override, set_dotted  # noqa: F401 (re-exported)
from debiaspl.config.protocols import NO_PROTOCOL, PROTOCOLS
from debiaspl.config.schema import AlgorithmConfig, ExperimentConfig, HookConfig, describe_fields  # noqa: F401 (re-exported)
from debiaspl.hooks import HOOKS

_SHARED_ALGORITHM_KEYS = ("name", "unlabeled_weight", "marginal_momentum")


class AbsentPartOptions(ConfigError):
    """Options for an algorithm part (a base or a layer) that `algorithm.name` does not include."""

    def __init__(self, message: str, section: str):
        super().__init__(message)
        self.section = section  # e.g. "algorithm.debiaspl"


def load_experiment(path: str | Path, overrides: typing.Sequence[str] = (), *,
                    upgrade_legacy: bool = False) -> ExperimentConfig:
    """Read an experiment file, apply `dotted.key=value` overrides, validate, and fill defaults.

    upgrade_legacy: the file may be in the layout of older versions (a run folder's config.yaml).
    """
    path = Path(path)
    raw = _read_with_bases(path, chain=())
    if upgrade_legacy:
        raw = upgrade_legacy_config(raw)
    for override in overrides:  # in order: a later --set sees what an earlier one did
        apply_override(raw, override, source=str(path))
    config = from_dict(with_protocol(_upgrade_old_values(raw)), source=str(path))
    if not config.logging.run_name:
        config = replace_dotted(config, "logging.run_name", path.stem)
    return config


def load_saved_config(path: Path, overrides: typing.Sequence[str] = ()) -> ExperimentConfig:
    """A run folder's config.yaml, also one saved in an older layout (upgrade_legacy_config)."""
    return load_experiment(path, overrides, upgrade_legacy=True)


def with_protocol(raw: dict) -> dict:
    """`raw` over the settings of the protocol it names (none: `raw` as it is); the file's keys win."""
    name = raw.get("protocol", NO_PROTOCOL)
    if not isinstance(name, str) or name == NO_PROTOCOL or name not in PROTOCOLS:  # validation reports it
        return raw
    settings = _protocol_settings(name, raw.get("algorithm"))
    if settings is None:
        return raw
    merged: dict = {}
    for key, value in settings.items():
        set_dotted(merged, key, value)
    deep_merge(merged, raw)
    return merged


def protocol_deviations(config: ExperimentConfig) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (the protocol's value, the run's)} where the run departs from its protocol."""
    if config.protocol == NO_PROTOCOL:
        return {}
    flat = flatten(to_dict(config))
    settings = _protocol_settings(config.protocol, {"name": config.algorithm.name}) or {}
    return {key: (value, flat[key]) for key, value in settings.items() if flat.get(key) != value}


def _protocol_settings(name: str, algorithm: Any) -> dict[str, Any] | None:
    """The protocol's settings for the algorithm `raw` names; None when that name is not valid."""
    algorithm_name = algorithm.get("name", DEFAULT_ALGORITHM) if isinstance(algorithm, dict) else DEFAULT_ALGORITHM
    try:
        base, layer = parse_algorithm_name(algorithm_name)
    except ValueError:
        return None
    return PROTOCOLS[name].resolved(base.name, layer.name if layer else None)


def _upgrade_old_values(raw: dict) -> dict:
    """Values older versions wrote that today's schema spells otherwise: train.ema_warmup was a bool."""
    train = raw.get("train")
    if isinstance(train, dict) and isinstance(train.get("ema_warmup"), bool):
        raw = {**raw, "train": {**train, "ema_warmup": "tf" if train["ema_warmup"] else "none"}}
    return raw


def from_dict(raw: dict, source: str = "config") -> ExperimentConfig:
    """Build and validate an ExperimentConfig from a plain nested dict."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    config = _build(ExperimentConfig, raw, prefix="", source=source)
    _check_relations(config, source)
    return config


def to_dict(config: ExperimentConfig) -> dict:
    """Plain nested dicts and lists, in the shape an experiment file has (hooks as flat mappings)."""
    raw = {f.name: dataclasses.asdict(getattr(config, f.name)) if dataclasses.is_dataclass(getattr(config, f.name))
           else getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in ("hooks", "algorithm")}
    algorithm = config.algorithm
    raw["algorithm"] = {key: getattr(algorithm, key) for key in _SHARED_ALGORITHM_KEYS}
    raw["algorithm"][algorithm.base_name] = dataclasses.asdict(algorithm.base)
    if algorithm.layer is not None:
        raw["algorithm"][algorithm.layer_name] = dataclasses.asdict(algorithm.layer)
    raw["hooks"] = [{"name": hook.name, **dataclasses.asdict(hook.options)} for hook in config.hooks]
    return {f.name: raw[f.name] for f in dataclasses.fields(config)}  # in the schema's order


def save_config(config: ExperimentConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


def replace_dotted(config: ExperimentConfig, key: str, value: Any) -> ExperimentConfig:
    """A copy of `config` with one dotted key changed (and validated)."""
    raw = to_dict(config)
    set_dotted(raw, key, value)
    return from_dict(raw, source=f"setting {key}")


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader (same tags, nothing executable) that refuses a mapping key given twice: plain YAML
    keeps the later value silently, so a second `train:` would drop every setting of the first."""

    def get_single_node(self):
        node = super().get_single_node()
        _refuse_duplicate_keys(node, "")
        return node


def _refuse_duplicate_keys(node: Any, prefix: str) -> None:
    if isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _refuse_duplicate_keys(item, f"{prefix.rstrip('.')}[{index}].")
    if not isinstance(node, yaml.MappingNode):
        return
    first_line: dict[tuple, int] = {}
    for key, value in node.value:
        name = (key.tag, key.value) if isinstance(key, yaml.ScalarNode) else None
        if name in first_line and key.tag != "tag:yaml.org,2002:merge":
            raise yaml.MarkedYAMLError(problem=f"key {prefix}{key.value} appears twice (lines {first_line[name]} and "
                                               f"{key.start_mark.line + 1}); keep one", problem_mark=None)
        if name is not None:
            first_line.setdefault(name, key.start_mark.line + 1)
        _refuse_duplicate_keys(value, f"{prefix}{key.value}.")


def read_yaml(path: Path) -> Any:
    """A YAML file's data (safe tags only), or a ConfigError naming the file and, for a key given
    twice, the key and its lines. Experiment files, their bases and run folders' config.yaml."""
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it as UTF-8 text: {exc}") from None


def _read_with_bases(path: Path, chain: tuple[Path, ...]) -> dict:
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        raise ConfigError(f"{path}: `base:` files form a cycle: {cycle}")
    if not path.is_file():
        hint = f" (named as base by {chain[-1]})" if chain else ""
        raise ConfigError(f"experiment file not found: {path}{hint}")
    data = read_yaml(path)
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
    deep_merge(merged, data)
    return merged


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
            build = _build_algorithm if hint is AlgorithmConfig else _build
            values[f.name] = build(hint, value, dotted + ".", source)
        else:
            values[f.name] = _check_value(value, hint, f.metadata, dotted, source)
    return cls(**values)


def _build_algorithm(cls: type, raw: dict, prefix: str, source: str) -> AlgorithmConfig:
    """The shared keys, then one section per part that `name` includes (defaults where it is absent)."""
    name = raw.get("name", AlgorithmConfig().name)
    try:
        base, layer = parse_algorithm_name(name)
    except ValueError as exc:
        raise ConfigError(f"{source}: {prefix}name = {name!r}: {exc}") from None
    parts = {base.name: base.Options, **({layer.name: layer.Options} if layer else {})}
    for key, value in raw.items():
        if key in _SHARED_ALGORITHM_KEYS or key in parts:
            continue
        if key in {**ALGORITHMS, **LAYERS} and value is None:  # how a file drops a section its base file set
            continue
        if key in ALGORITHMS or key in LAYERS:
            suggestion = (f"{base.name}{LAYER_SEPARATOR}{key}" if key in LAYERS
                          else key + (f"{LAYER_SEPARATOR}{layer.name}" if layer else ""))
            raise AbsentPartOptions(f"{source}: {prefix}{key} holds the options of {key}, which {prefix}name = {name} "
                                    f"does not include (for {key}: {prefix}name = {suggestion})",
                                    section=f"{prefix}{key}")
        leaves = {**{k: k for k in (*_SHARED_ALGORITHM_KEYS, *parts)},
                  **{f.name: f"{part}.{f.name}" for part, options in parts.items() for f in dataclasses.fields(options)}}
        close = difflib.get_close_matches(str(key), list(leaves), n=1)
        hint = f"; did you mean {prefix}{leaves[close[0]]}?" if close else f"; allowed: {', '.join(dict.fromkeys(leaves.values()))}"
        raise ConfigError(f"{source}: unknown key {prefix}{key}{hint}")
    shared = _build(cls, {key: raw[key] for key in _SHARED_ALGORITHM_KEYS if key in raw}, prefix, source)
    options = {}
    for part, part_options in parts.items():
        section = {} if raw.get(part) is None else raw[part]
        if not isinstance(section, dict):
            raise ConfigError(f"{source}: {prefix}{part} must be a section (a mapping) of {part}'s options, got {section!r}")
        options[part] = _build(part_options, section, f"{prefix}{part}.", source)
    return dataclasses.replace(shared, base=options[base.name], layer=options[layer.name] if layer else None)


def _build_hooks(entries: Any, source: str) -> tuple[HookConfig, ...]:
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
        if not isinstance(name, str) or name not in HOOKS:
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
    if config.data.teacher_logits and config.data.label_file:
        raise ConfigError(f"{source}: data.teacher_logits and data.label_file both give labels; use one")
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
        choices = meta.get("choices")
        if choices is not None and value not in choices:
            if hasattr(choices, "unknown_message"):  # a registry that explains its own names (models: prefixes)
                fail(choices.unknown_message(value))
            close = difflib.get_close_matches(value, list(choices), n=1)
            fail(f"must be one of {', '.join(choices)}" + (f" (did you mean {close[0]}?)" if close else ""))
    else:  # pragma: no cover - a schema field of a type this loader does not know
        raise TypeError(f"unsupported config type {hint} for {dotted}")
    bounds = {"ge": (operator.ge, ">="), "gt": (operator.gt, ">"), "le": (operator.le, "<="), "lt": (operator.lt, "<")}
    for name, (compare, symbol) in bounds.items():
        bound = meta.get(name)
        # ints compare exactly: as floats, 2**63 - 1 and 2**63 are the same number
        if bound is not None and not compare(value, bound):
            fail(f"must be {symbol} {bound}" if isinstance(bound, int) else f"must be {symbol} {bound:g}")
    return value
