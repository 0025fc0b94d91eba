"""A grid of runs from one experiment file: settings x seeds, trained one after another.

`debiaspl sweep exp.yaml --seeds 0,1,2 --set-grid algorithm.name=fixmatch,fixmatch+debiaspl` makes one run
per combination, in `<logging.run_dir>/<experiment name>/<grid values>-seed<N>`, so that
`debiaspl report <logging.run_dir>/<experiment name>` finds them all. Runs that finished are
skipped and runs that stopped resume (train_run does both), so an interrupted sweep continues
with the same command.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path

from debiaspl.config import (AbsentPartOptions, ExperimentConfig, flatten, get_dotted, load_experiment, parse_override,
                             replace_dotted, to_dict, training_settings)
from debiaspl.errors import UserError


@dataclass(frozen=True)
class GridAxis:
    key: str
    values: tuple[str, ...]  # as typed; the config loader parses and validates each


def parse_grid_axis(text: str) -> GridAxis:
    """'algorithm.name=fixmatch,flexmatch' -> GridAxis('algorithm.name', ('fixmatch', 'flexmatch')).

    Commas inside brackets belong to a value, so a list can be one value: 'key=[1,2],[3,4]'.
    """
    key, _ = parse_override(text)  # the same 'key=value' shape as --set, with the same error
    values = _split_top_level(text.partition("=")[2])
    if not values or any(not value for value in values):
        raise UserError(f"--set-grid {text!r}: expected key=value1,value2,... with no empty value")
    if len(set(values)) != len(values):
        raise UserError(f"--set-grid {text!r}: a value is listed twice")
    return GridAxis(key, tuple(values))


def parse_seeds(text: str) -> tuple[int, ...]:
    """'0,1,2' or '0-2' -> (0, 1, 2)."""
    seeds: list[int] = []
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        try:
            span = range(int(first), int(last) + 1) if dash else [int(first)]
        except ValueError:
            raise UserError(f"--seeds {text!r}: expected non-negative integers like 0,1,2 or 0-4") from None
        if not span:
            raise UserError(f"--seeds {text!r}: the range {part.strip()} is empty; write it low-high")
        seeds.extend(span)
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {text!r}: expected distinct seeds like 0,1,2 or 0-4")
    return tuple(seeds)


def sweep_configs(experiment: Path, overrides: list[str], axes: list[GridAxis],
                  seeds: tuple[int, ...] | None) -> tuple[list[ExperimentConfig], list[str]]:
    """One validated config per distinct grid point and seed, each with its own run folder.

    Returns (configs, notes): grid points that would train the same run as an earlier one (0.4 and
    0.40, or FixMatch under several algorithm.debiaspl.tau values: a grid value for an algorithm part
    that a point's algorithm.name does not include does not apply to that point) are left out, each
    with a note.
    """
    if len({axis.key for axis in axes}) != len(axes):
        raise UserError("--set-grid names the same key twice; put all its values in one --set-grid")
    if any(axis.key == "train.seed" for axis in axes):
        raise UserError("give seeds with --seeds, not --set-grid train.seed=...")
    base = load_experiment(experiment, overrides)
    parent = Path(base.logging.run_dir) / base.logging.run_name
    configs, notes, trains = [], [], {}
    # seed by seed, so a sweep stopped early has every setting for its first seeds
    for seed in seeds if seeds is not None else (base.train.seed,):
        for point in itertools.product(*(axis.values for axis in axes)):
            assignments = [f"{axis.key}={value}" for axis, value in zip(axes, point)]
            full_name = "-".join([*(_slug(axis.key, value) for axis, value in zip(axes, point)), f"seed{seed}"])
            config, applied = _load_point(experiment, overrides, list(zip(axes, point)), seed)
            name = "-".join([*(_slug(axis.key, value) for axis, value in applied), f"seed{seed}"])
            config = replace_dotted(replace_dotted(config, "logging.run_dir", str(parent)), "logging.run_name", name)
            what_it_trains = repr(sorted(training_settings(flatten(to_dict(config))).items()))
            if what_it_trains in trains:
                unused = [f"{axis.key}={value}" for axis, value in zip(axes, point) if (axis, value) not in applied]
                reason = f" ({', '.join(unused)} does not apply to algorithm.name = {config.algorithm.name})" if unused else ""
                notes.append(f"{full_name} would train the same run as {trains[what_it_trains]}{reason}; left out")
                continue
            clash = next((c.logging.run_name for c in configs if c.logging.run_name.lower() == name.lower()), None)
            if clash is not None:
                raise UserError(f"grid values {', '.join(assignments)} give the run folder name {name!r}, as "
                                f"another grid point does ({clash!r}); use values that differ in letters or digits")
            trains[what_it_trains] = name
            configs.append(config)
    return configs, notes


def grid_settings(config: ExperimentConfig, axes: list[GridAxis]) -> list[str]:
    """The run's grid values and seed as `key=value` (its config's values), for the line that announces it;
    a grid value for an algorithm part the run's algorithm.name does not include is not among them."""
    raw, missing = to_dict(config), object()
    shown = [(axis.key, get_dotted(raw, axis.key, missing)) for axis in axes]  # hook options too
    shown = [(key, value) for key, value in shown if value is not missing] + [("train.seed", config.train.seed)]
    return [f"{key}={str(value).lower() if isinstance(value, bool) else value}" for key, value in shown]


def _load_point(experiment: Path, overrides: list[str], point: list[tuple[GridAxis, str]],
                seed: int) -> tuple[ExperimentConfig, list[tuple[GridAxis, str]]]:
    """The point's config, and the grid values it uses: those for an algorithm part its algorithm.name
    does not include are dropped (a part named in the experiment itself stays an error)."""
    while True:
        try:
            assignments = [f"{axis.key}={value}" for axis, value in point]
            return load_experiment(experiment, [*overrides, *assignments, f"train.seed={seed}"]), point
        except AbsentPartOptions as exc:
            kept = [(axis, value) for axis, value in point
                    if axis.key != exc.section and not axis.key.startswith(exc.section + ".")]
            if len(kept) == len(point):
                raise
            point = kept


def _slug(key: str, value: str) -> str:
    """A folder-name part for one grid value: the value alone for algorithm.name, else leaf=value."""
    text = value if key == "algorithm.name" else f"{key.rpartition('.')[2]}={value}"
    return re.sub(r"[^A-Za-z0-9._=+]+", "_", text).strip("_") or "empty"


def _split_top_level(text: str) -> list[str]:
    parts, depth, current = [], 0, []
    for char in text:
        depth += char in "[{"
        depth -= char in "]}"
        if char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    parts.append("".join(current).strip())
    return parts
