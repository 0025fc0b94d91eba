"""`option()`: a config field with its meaning and bounds. A leaf module, so that every part that
declares options (the config schema, algorithms, hooks) can use it without importing the others.
"""

from dataclasses import field
from typing import Any, Mapping


def option(default: Any, doc: str, *, ge: float | None = None, gt: float | None = None,
           le: float | None = None, lt: float | None = None, execution: bool = False,
           choices: Mapping[str, Any] | None = None) -> Any:
    """A dataclass field with its documentation and numeric bounds (checked on load).

    choices: a registry (a dict by name) the value must be a key of, read when a config loads, so a
    new registry entry is a valid value without any change here.

    execution=True marks a setting that changes how a run executes or reports, never what it learns
    (beyond the order of float roundings): a run may resume under another value of it, and sweep and
    report treat runs that differ only in such settings as the same run.
    """
    return field(default=default, metadata={"doc": doc, "ge": ge, "gt": gt, "le": le, "lt": lt,
                                            "execution": execution, "choices": choices})
