"""Are two runs the same run? Compares the tensors of two checkpoints (or snapshots), section by section.

    python benchmarks/compare_checkpoints.py runs/a/checkpoint.pt runs/b/checkpoint.pt

Prints, for the model weights, the EMA weights, the optimizer state and the algorithm state (q_hat
and the base's own; a format-1 checkpoint's "class_marginal" is read as q_hat), whether every tensor
is bit-identical and otherwise the largest absolute difference. Exit status 0 when all sections are
identical, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from debiaspl.run_folder import load_checkpoint, upgrade_format_1


def tensors(tree, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of a nested dict / list, by its path."""
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else ()
    found = {}
    for key, value in items:
        found.update(tensors(value, f"{prefix}.{key}" if prefix else str(key)))
    return found


def compare(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> str:
    if a.keys() != b.keys():
        return f"different tensors: {sorted(a.keys() ^ b.keys())[:5]}"
    worst, where = 0.0, ""
    for key in a:
        if a[key].shape != b[key].shape:
            return f"{key}: shape {tuple(a[key].shape)} vs {tuple(b[key].shape)}"
        if not torch.equal(a[key], b[key]):
            difference = (a[key].double() - b[key].double()).abs().max().item()
            if difference >= worst:
                worst, where = difference, key
    return "bit-identical" if not where else f"max |difference| {worst:.3g} (at {where})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    args = parser.parse_args(argv)
    states = [upgrade_format_1(load_checkpoint(path)) for path in (args.first, args.second)]
    all_same = True
    for section in ("model", "ema", "optimizer", "algorithm"):
        if section not in states[0] or section not in states[1]:
            print(f"{section:<10} not in both")
            continue
        verdict = compare(tensors(states[0][section]), tensors(states[1][section]))
        all_same &= verdict == "bit-identical"
        print(f"{section:<10} {verdict}")
    return 0 if all_same else 1


if __name__ == "__main__":
    sys.exit(main())
