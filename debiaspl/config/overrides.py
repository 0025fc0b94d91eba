"""`--set dotted.key=value` on an experiment's merged dict, before validation (README, "Changing hooks with --set").

Sections are addressed by key (`train.steps=100`), the `hooks:` list by index (`hooks.0.interval=100`)
or by hook name (`hooks.drift.interval=100`); `hooks.NAME={...}` sets one hook's options, adding it
when it is not listed, `hooks.NAME=null` removes it, and `hooks=[...]` replaces the whole list.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import sys
import typing
from typing import Any

import yaml

from debiaspl.algorithm import ALGORITHMS, LAYERS
from debiaspl.config.schema import AlgorithmConfig, ExperimentConfig
from debiaspl.errors import UserError
from debiaspl.hooks import HOOKS


class ConfigError(UserError):
    """An experiment file or override that does not fit the schema."""


def parse_override(text: str) -> tuple[str, Any]:
    """'train.steps=100' -> ('train.steps', 100); the value is parsed as YAML (types follow)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected dotted.key=value, e.g. train.steps=1000")
    if re.fullmatch(r"\s*[-+]?0[0-9]+\s*", value):  # YAML 1.1 reads 010 as octal 8; a user means 10
        return key.strip(), int(value)
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return key.strip(), parsed


def apply_override(raw: dict, text: str, source: str) -> None:
    """Apply one `--set` to `raw` in place; `hooks=[...]` that drops hooks of `source` warns on stderr."""
    key, value = parse_override(text)
    if leaf_type(key, raw) is str and not isinstance(value, str):  # `run_name=2024`, `root=yes`: as typed
        value = text.partition("=")[2].strip()  # (a YAML string, quoted or not, is that string: 'my run')
    if key == "hooks":
        _warn_of_dropped_hooks(raw.get("hooks"), value, source)
    set_dotted(raw, key, value)


def set_dotted(raw: dict, key: str, value: Any) -> None:
    """raw[a][b] = value for 'a.b', making sections on the way; 'hooks.N...' and 'hooks.NAME...' address
    one entry of the hooks list."""
    parts = key.split(".")
    if parts[0] == "hooks" and len(parts) > 1:
        _set_hook(raw, key, parts[1], parts[2:], value)
    else:
        _set_path(raw, f"{key}={yaml_text(value)}", parts, value)


def get_dotted(raw: dict, key: str, default: Any = None) -> Any:
    """The value `set_dotted(raw, key, ...)` would replace (hooks addressed the same way), or `default`."""
    parts, node = key.split("."), raw
    if parts[0] == "hooks" and len(parts) > 1:
        entries = raw.get("hooks") if isinstance(raw.get("hooks"), list) else []
        if _is_index(parts[1]):
            found = entries[int(parts[1]):][:1]
        else:
            found = [entry for entry in entries if isinstance(entry, dict) and entry.get("name") == parts[1]]
        if not found:
            return default
        node, parts = found[0], parts[2:]
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def leaf_type(key: str, raw: dict) -> Any:
    """The schema type of a dotted key (`raw` tells which hook `hooks.N.option` is), or None when it
    does not exist."""
    parts = key.split(".")
    if parts[0] == "hooks":
        if len(parts) != 3:
            return None
        hook = HOOKS.get(_name_at(raw.get("hooks"), parts[1]) if _is_index(parts[1]) else parts[1])
        return typing.get_type_hints(hook.Options).get(parts[2]) if hook is not None else None
    cls: Any = ExperimentConfig
    for part in parts:
        if not dataclasses.is_dataclass(cls):
            return None
        if cls is AlgorithmConfig and part in {**ALGORITHMS, **LAYERS}:
            cls = (ALGORITHMS.get(part) or LAYERS[part]).Options
            continue
        cls = typing.get_type_hints(cls).get(part)
    return cls


def yaml_text(value: Any) -> str:
    """A value as one line of YAML, as it would be typed after `--set key=`: 100, true, {interval: 5}."""
    try:
        text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10 ** 9).strip()
    except yaml.YAMLError:  # a value set from code (replace_dotted) that YAML has no plain form for
        return repr(value)
    return text.removesuffix("...").strip()


def _set_path(node: dict, shown: str, parts: list[str], value: Any) -> None:
    *parents, leaf = parts
    for part in parents:
        child = node.setdefault(part, {})
        if child is None:  # an empty section (`debiaspl:` with nothing under it)
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {shown}: {part} = {child!r} is not a section")
        node = child
    if isinstance(value, dict) and isinstance(node.get(leaf), dict):
        deep_merge(node[leaf], value)  # `--set train={steps: 4}` changes steps, as a base: file would
    else:
        node[leaf] = value


def deep_merge(into: dict, update: dict) -> None:
    """`update`'s keys into `into`, section by section (base: files, --set SECTION={...})."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            deep_merge(into[key], value)
        else:
            into[key] = value


def _set_hook(raw: dict, key: str, selector: str, rest: list[str], value: Any) -> None:
    shown = f"{key}={yaml_text(value)}"
    entries = raw.get("hooks")
    if entries is None:
        entries = raw["hooks"] = []
    if not isinstance(entries, list):
        raise ConfigError(f"--set {shown}: hooks = {entries!r} is not a list like `- name: drift`")
    index = _hook_index(entries, selector, shown, whole_entry=not rest)
    if rest:
        entry = entries[index]
        if not isinstance(entry, dict):
            raise ConfigError(f"--set {shown}: hooks.{index} = {entry!r} is not a mapping like {{name: drift}}")
        _set_path(entry, shown, rest, value)
    elif value is None:  # removing a hook that is not listed leaves the list as it is
        if index is not None:
            del entries[index]
    else:
        listed = entries[index] if index is not None else None
        name = selector if not _is_index(selector) else listed.get("name") if isinstance(listed, dict) else None
        entry = _entry(value, name, by_name=not _is_index(selector), shown=shown)
        if index is None:
            entries.append(entry)
        else:
            entries[index] = entry


def _hook_index(entries: list, selector: str, shown: str, whole_entry: bool) -> int | None:
    """The list index `selector` (an index or a hook name) names; None for a hook that is not listed,
    which only a whole entry (`hooks.NAME={...}` or `=null`) may address."""
    if _is_index(selector):
        if int(selector) >= len(entries):
            raise ConfigError(f"--set {shown}: hooks has no entry {selector}; {_listing(entries)} "
                              f"(to add a hook: --set hooks.NAME={{}}, NAME one of {', '.join(HOOKS)})")
        return int(selector)
    if selector not in HOOKS:
        close = difflib.get_close_matches(selector, list(HOOKS), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"--set {shown}: {selector!r} is neither a hook nor an index into hooks{hint}; hooks "
                          f"are {', '.join(HOOKS)}; {_listing(entries)}")
    found = [i for i, entry in enumerate(entries) if isinstance(entry, dict) and entry.get("name") == selector]
    if len(found) > 1:
        raise ConfigError(f"--set {shown}: {selector} is listed {len(found)} times in hooks "
                          f"({', '.join(f'hooks.{i}' for i in found)}) and may be listed once; address one by its "
                          f"index, e.g. --set hooks.{found[-1]}=null removes the last")
    if found:
        return found[0]
    if not whole_entry:
        raise ConfigError(f"--set {shown}: {selector} is not in the hooks list ({_listing(entries)}); to add it, "
                          f"put --set hooks.{selector}={{}} (its defaults) before this --set")
    return None


def _entry(value: Any, name: str | None, by_name: bool, shown: str) -> dict:
    """The list entry `hooks.SELECTOR=value` puts in place: `value` holds the hook's options."""
    if not isinstance(value, dict):
        example = _example_options(name)
        raise ConfigError(f"--set {shown}: expected the options of {name or 'the hook'} as a mapping like "
                          f"{example}, {{}} for its defaults, or null to remove it")
    if by_name and value.get("name", name) != name:
        raise ConfigError(f"--set {shown}: name {value['name']!r} inside the options of hooks.{name}; leave it out "
                          f"(to add {value['name']}: --set hooks.{value['name']}={{}})")
    return {"name": name, **value} if name is not None else dict(value)


def _example_options(name: str | None) -> str:
    hook = HOOKS.get(name) if isinstance(name, str) else None
    if hook is None:
        return "{interval: 100}"
    first = dataclasses.fields(hook.Options)[0]
    return f"{{{first.name}: {yaml_text(first.default)}}}"


def _is_index(selector: str) -> bool:
    return selector.isascii() and selector.isdigit()  # "²".isdigit() too, which int() refuses


def _name_at(entries: Any, selector: str) -> Any:
    if isinstance(entries, list) and int(selector) < len(entries) and isinstance(entries[int(selector)], dict):
        name = entries[int(selector)].get("name")
        return name if isinstance(name, str) else None
    return None


def _listing(entries: list) -> str:
    """'the list holds hooks.0 = drift, hooks.1 = cartography', or that it is empty."""
    if not entries:
        return "the hooks list is empty"
    names = [entry.get("name") if isinstance(entry, dict) and "name" in entry else entry for entry in entries]
    return "the list holds " + ", ".join(f"hooks.{i} = {name}" for i, name in enumerate(names))


def _warn_of_dropped_hooks(before: Any, after: Any, source: str) -> None:
    """`--set hooks=[...]` replaces the list: say which listed hooks it turns off, and the `--set`s that
    would change only what it gives. `hooks=[]` (or null) turns them all off, which says it already."""
    if not isinstance(before, list) or not isinstance(after, list) or not after:
        return
    if not all(isinstance(entry, dict) and isinstance(entry.get("name"), str) for entry in after):
        return  # validation reports the entry
    names = [entry["name"] for entry in before if isinstance(entry, dict) and isinstance(entry.get("name"), str)]
    dropped = [name for name in names if name not in {entry["name"] for entry in after}]
    if not dropped:
        return
    instead = []
    for entry in after:
        options = {key: value for key, value in entry.items() if key != "name"}
        if entry["name"] not in names or not options:
            instead.append(f"--set hooks.{entry['name']}={{}}")
        instead += [f"--set hooks.{entry['name']}.{key}={yaml_text(value)}" for key, value in options.items()]
    _warn_once(f"debiaspl: warning: --set hooks={yaml_text(after)} drops {', '.join(dropped)} (listed in {source}); "
               f"to keep them and change only what it gives: {' '.join(dict.fromkeys(instead))}")


@functools.cache
def _warn_once(line: str) -> None:
    """Each warning once a process: a sweep loads its experiment once per grid point."""
    print(line, file=sys.stderr)
