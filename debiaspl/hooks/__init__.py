"""Hooks that watch training: class-distribution drift, dataset cartography, entropy uncertainty, TracIn.

HOOKS maps the name used in an experiment's `hooks:` list to the Hook class; each class carries
an `Options` dataclass, validated like the rest of the config.
"""

from debiaspl.hooks.base import Hook, HookLog, RunContext, StepRecord
from debiaspl.hooks.cartography import CartographyHook
from debiaspl.hooks.drift import DriftHook
from debiaspl.hooks.influence import InfluenceHook
from debiaspl.hooks.uncertainty import UncertaintyHook

HOOKS: dict[str, type[Hook]] = {
    DriftHook.name: DriftHook,
    CartographyHook.name: CartographyHook,
    UncertaintyHook.name: UncertaintyHook,
    InfluenceHook.name: InfluenceHook,
}

__all__ = ["HOOKS", "CartographyHook", "DriftHook", "Hook", "InfluenceHook", "HookLog", "RunContext", "StepRecord", "UncertaintyHook"]
