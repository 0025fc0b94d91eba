"""Reading what older versions saved: their algorithm config was one flat section.

Run folders and checkpoints of format 1 hold `algorithm: {name: fixmatch | debiaspl, threshold, tau,
unlabeled_weight, marginal_momentum}`, where `debiaspl` meant FixMatch + DebiasPL.
"""

from __future__ import annotations

from typing import Any

from debiaspl.algorithm.compose import LAYER_SEPARATOR


def upgrade_legacy_config(raw: dict) -> dict:
    """A config saved before algorithms had their own sections (checkpoint format 1), in today's layout.

    Then `algorithm` was flat: name fixmatch | debiaspl (= FixMatch + DebiasPL), threshold, tau, ...
    """
    algorithm = raw.get("algorithm") if isinstance(raw, dict) else None
    if not isinstance(algorithm, dict) or not ({"tau", "threshold"} & algorithm.keys() or algorithm.get("name") == "debiaspl"):
        return raw
    layered = algorithm.get("name", "debiaspl") == "debiaspl"  # the old default
    upgraded: dict[str, Any] = {"name": f"fixmatch{LAYER_SEPARATOR}debiaspl" if layered else "fixmatch"}
    upgraded.update({key: algorithm[key] for key in ("unlabeled_weight", "marginal_momentum") if key in algorithm})
    if "threshold" in algorithm:
        upgraded["fixmatch"] = {"threshold": algorithm["threshold"]}
    if layered and "tau" in algorithm:  # FixMatch runs stored a tau they never used
        upgraded["debiaspl"] = {"tau": algorithm["tau"]}
    return {**raw, "algorithm": upgraded}
