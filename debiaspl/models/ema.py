"""Exponential moving average of a model's weights, the model FixMatch (Sohn et al. 2020)
evaluates: ema = d * ema + (1 - d) * param after every optimizer step.
"""

import copy

import torch
from torch import nn


# step t (>= 1) -> the largest decay allowed at t; the decay used is min(decay, that).
EMA_WARMUPS = {
    "tf": lambda step: (1.0 + step) / (10.0 + step),
    # DASO's min(d, 1 - 1/(t + 1)) with its 0-based update count t = step - 1: the first update copies.
    "daso": lambda step: 1.0 - 1.0 / step,
    "none": lambda step: 1.0,
}


class ModelEMA:
    """Exponential moving average of a model's weights, used for evaluation (FixMatch).

    `module` is a deep copy of the model (eval mode, requires_grad False). After each optimizer
    step, `update(model, step)` moves every floating-point parameter towards the model's:
    ema = d_t * ema + (1 - d_t) * param, and copies every buffer (BatchNorm running statistics,
    num_batches_tracked) and any non-float parameter as is. BN statistics are copied rather than
    averaged because they already are moving averages (momentum 0.001).

    `warmup` (EMA_WARMUPS) caps the decay early on: "tf", d_t = min(decay, (1 + step) / (10 + step)),
    as TensorFlow's ExponentialMovingAverage with num_updates: the first update uses 2/11, so a
    short run (or the first thousand steps of a long one) is not dominated by the random initial
    weights, which a plain 0.999 average would keep at weight 0.999^t; "daso", min(decay,
    1 - 1 / step), DASO's (its first update copies the weights); "none", d_t = decay. With `average_buffers` (DASO) the float
    buffers are averaged like the weights instead of copied.

    The update runs under no_grad with torch._foreach ops on whole parameter lists (one kernel
    per dtype/device group instead of one per tensor) and never syncs with the host.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: str = "tf", average_buffers: bool = False):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        if warmup not in EMA_WARMUPS:
            raise ValueError(f"unknown EMA warm-up {warmup!r}; expected one of {', '.join(EMA_WARMUPS)}")
        self.decay = decay
        self.warmup = warmup
        self.average_buffers = average_buffers
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)

    def get_decay(self, step: int) -> float:
        """The decay d_t used by the update after `step` optimizer steps (step >= 1)."""
        return min(self.decay, EMA_WARMUPS[self.warmup](step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Average `model`'s float parameters into `module` and copy its buffers.

        `model` must have the architecture the EMA was built from; `step` is the number of
        optimizer steps done so far, including the one just taken (>= 1).
        """
        if step < 1:
            raise ValueError(f"step counts optimizer steps done so far and must be >= 1, got {step}")
        ema_params, model_params, ema_other, model_other = [], [], [], []
        pairs = zip(self.module.parameters(), model.parameters(), strict=True)
        for ema_param, param in pairs:
            if ema_param.dtype.is_floating_point:
                ema_params.append(ema_param)
                model_params.append(param.detach())
            else:
                ema_other.append(ema_param)
                model_other.append(param.detach())
        for ema_buffer, buffer in zip(self.module.buffers(), model.buffers(), strict=True):
            averaged = self.average_buffers and ema_buffer.dtype.is_floating_point
            (ema_params if averaged else ema_other).append(ema_buffer)
            (model_params if averaged else model_other).append(buffer)

        if ema_params:
            # lerp_(ema, param, w) = ema + w * (param - ema) = (1 - w) * ema + w * param, w = 1 - d.
            torch._foreach_lerp_(ema_params, model_params, 1.0 - self.get_decay(step))
        if ema_other:
            torch._foreach_copy_(ema_other, model_other)

    def state_dict(self) -> dict:
        """The averaged model's state_dict: loadable into a plain model of the same architecture."""
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Restore the averaged weights (copied in place, so the module's tensors are kept)."""
        self.module.load_state_dict(state)
