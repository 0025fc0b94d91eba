"""Stopping a run whose numbers stopped being numbers, before it overwrites anything good.

A NaN or inf loss (a learning rate of 1e6, a weight of 1e30 on the unlabeled loss, a damaged
weight) would otherwise train on to the end, overwrite the checkpoint with NaN tensors and write
a results.json at chance that sweeps and reports count as finished. The watch records the first
step whose loss was not finite on the device (no host sync per step) and is asked at the points
where the loop already syncs: logging, evaluation, and before every checkpoint, where the weights
and q_hat are checked too.
"""

from __future__ import annotations

import torch

from debiaspl.errors import UserError


class TrainingDiverged(UserError):
    """The loss, a weight or q_hat became NaN or infinite; the last good checkpoint is kept."""


class NonFiniteWatch:
    def __init__(self, device: torch.device):
        self.first_bad_step = torch.full((), -1, dtype=torch.long, device=device)

    def update(self, step: int, loss: torch.Tensor) -> None:
        """Remember `step` if its loss is not finite and no earlier step was bad."""
        bad = ~torch.isfinite(loss.detach()) & (self.first_bad_step < 0)
        self.first_bad_step = torch.where(bad, torch.full_like(self.first_bad_step, step), self.first_bad_step)

    def check(self, kept: str) -> None:
        """Raise TrainingDiverged naming the first bad step; `kept` says what the run folder still holds."""
        step = int(self.first_bad_step)
        if step >= 0:
            raise TrainingDiverged(f"training diverged: the loss was not finite at step {step} (too high a learning "
                                   f"rate or loss weight, or damaged weights); {kept}; no results were written")

    @staticmethod
    def check_tensors(tensors: dict[str, torch.Tensor], step: int, kept: str) -> None:
        """Raise TrainingDiverged naming the first tensor (weight, buffer, q_hat) with a NaN or inf."""
        floats = {name: tensor for name, tensor in tensors.items() if tensor.is_floating_point()}
        finite = torch.stack([torch.isfinite(tensor).all() for tensor in floats.values()]) if floats else None
        if finite is None or bool(finite.all()):  # one host sync for the lot, not one per tensor
            return
        for name, is_finite in zip(floats, finite.tolist()):
            if not is_finite:
                raise TrainingDiverged(f"training diverged: {name} holds NaN or inf at step {step}; {kept}; "
                                       f"no results were written")
