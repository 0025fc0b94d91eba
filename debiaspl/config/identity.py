"""Run identity: which settings decide what a run learns, read off the schema.

Two runs with equal training settings train the same run (sweep leaves the second out, report puts
them in one row). A setting is left out when its schema field is marked `execution`, and q_hat's
momentum when the algorithm only watches q_hat (its registry entries say so); the options of an
algorithm part a run does not use are not in its config at all.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from debiaspl.algorithm import reads_class_marginal
from debiaspl.config.schema import ExperimentConfig


def _execution_keys(cls: type, prefix: str = "") -> set[str]:
    keys = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("execution"):
            keys.add(prefix + f.name)
        elif dataclasses.is_dataclass(hints[f.name]):
            keys |= _execution_keys(hints[f.name], f"{prefix}{f.name}.")
    return keys


# Keys that change how a run executes or reports, never what it learns (beyond the order of float
# roundings): a run may resume under other values of them, and `debiaspl report` puts runs that
# differ only in them (and in their seed) in one row.
EXECUTION_KEYS = frozenset(_execution_keys(ExperimentConfig))


def training_settings(flat: dict[str, Any]) -> dict[str, Any]:
    """The keys of a flattened config that decide what a run learns: all but EXECUTION_KEYS (though
    data.root counts for an image folder, where it names the data itself; a resume may still move the
    folder, RESUME_SAFE_KEYS), and algorithm.marginal_momentum for an algorithm that only watches q_hat
    (plain FixMatch, FlexMatch)."""
    settings = {key: value for key, value in flat.items() if key not in EXECUTION_KEYS}
    if flat.get("data.dataset") == "imagefolder":  # there the root is the data, not where a copy of it lives
        settings["data.root"] = flat.get("data.root")
    try:
        watched_only = not reads_class_marginal(flat.get("algorithm.name", ""))
    except ValueError:  # not a valid name (a hand-edited folder): compare every key
        watched_only = False
    if watched_only:
        settings.pop("algorithm.marginal_momentum", None)
    return settings


def flatten(raw: dict, prefix: str = "") -> dict[str, Any]:
    """{'train': {'steps': 1}} -> {'train.steps': 1}; lists (the hooks) stay whole values."""
    keys = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            keys.update(flatten(value, f"{prefix}{key}."))
        else:
            keys[f"{prefix}{key}"] = value
    return keys
