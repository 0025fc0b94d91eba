"""Training scalars summed on the device over a logging interval (losses, mask rate, pseudo-label accuracy)."""

import torch

from debiaspl.algorithm import StepOutput
from debiaspl.engine.distributed import Distributed


class PseudoLabelMonitor:
    """Sums over a logging interval, kept on the device so the loop never waits for the host."""

    TAGS = ("train/loss", "train/loss_sup", "train/loss_unsup", "pseudo/mask_rate", "pseudo/acc",
            "pseudo/acc_masked")

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(7, device=device, dtype=torch.float64)
        self.steps = 0  # steps summed since the last flush

    def update(self, result: StepOutput, y_ulb: torch.Tensor) -> None:
        correct = (result.pseudo_labels == y_ulb).double()
        mask = result.mask.double()
        self.sums += torch.stack([
            result.loss.detach().double(), result.loss_sup.detach().double(), result.loss_unsup.detach().double(),
            mask.mean(), correct.mean(), (correct * mask).sum(), mask.sum(),
        ])
        self.steps += 1

    def flush(self, distributed: Distributed | None = None) -> dict[str, float]:
        """Interval means over all processes; the one host sync of a logging interval happens here."""
        sums = self.sums
        if distributed is not None and distributed.enabled:
            sums = distributed.sum(sums)
            sums[:5] /= distributed.world_size  # per-step means of equal shards; the last two are counts
        loss, loss_sup, loss_unsup, mask_rate, acc, correct_masked, masked = sums.tolist()
        steps, self.steps = self.steps, 0
        self.sums.zero_()
        values = [loss / steps, loss_sup / steps, loss_unsup / steps, mask_rate / steps, acc / steps,
                  correct_masked / masked if masked else float("nan")]
        return dict(zip(self.TAGS, values))

    def state_dict(self) -> dict:
        return {"sums": self.sums.cpu(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.sums.copy_(state["sums"])
        self.steps = int(state["steps"])
