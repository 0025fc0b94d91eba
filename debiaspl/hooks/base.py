"""The hook API: named events around the training loop, and the frozen records hooks receive.

Hooks observe, they never steer: they get detached tensors the step already computed, write logs
and files, and keep checkpointable state. They never touch the model, optimizer, loss or global
RNG, and never force a host sync on every step (accumulate on the device, flush at an interval).
Adding a hook means writing one module with a `Hook` subclass and an `Options` dataclass, and
listing it in `debiaspl.hooks.HOOKS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch


class HookLog(Protocol):
    """Where hooks write: the run's TensorBoard and metrics.jsonl (debiaspl.engine.run_log.RunLog)."""

    def scalars(self, step: int, values: dict[str, float]) -> None: ...
    def histogram(self, tag: str, counts: list[int], edges: list[float], step: int) -> None: ...
    def figure(self, tag: str, figure: Any, step: int, png_path: Path | None = None) -> None: ...
    def text(self, tag: str, text: str, step: int = 0) -> None: ...
    def custom_scalars(self, layout: dict) -> None: ...


@dataclass(frozen=True)
class RunContext:
    """What a hook may know about the run, handed over once at train start."""

    run_dir: Path
    log: HookLog
    class_names: list[str]
    labeled_ids: list[str]            # [N_lb] stable sample ids (file paths for image folders)
    unlabeled_ids: list[str]          # [N_ulb]
    labeled_labels: torch.Tensor      # [N_lb] int64, on the device
    unlabeled_labels: torch.Tensor    # [N_ulb] int64 hidden truth, for monitoring only, on the device
    labeled_counts: list[int]         # [C]
    unlabeled_counts: list[int]       # [C]
    batch_size: int                   # B
    unlabeled_batch_size: int         # mu * B
    total_steps: int                  # T
    start_step: int                   # 0, or the step a resumed run continues from
    algorithm: str                    # algorithm.name, e.g. "fixmatch" or "flexmatch+debiaspl"
    debiased: bool                    # pseudo-labels come from debiased logits, not the raw weak view
    device: torch.device
    # [N, C, H, W] uint8 on the CPU, un-augmented, for the galleries hooks draw (None: no galleries)
    labeled_images: torch.Tensor | None = None
    unlabeled_images: torch.Tensor | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True)
class StepRecord:
    """What one training step computed, detached. Index i of a `*_ulb` / `*_weak` tensor is sample idx_ulb[i]."""

    step: int                          # steps done, counting this one (1 for the first step)
    idx_lb: torch.Tensor               # [B] indices into the labeled set
    y_lb: torch.Tensor                 # [B]
    logits_lb: torch.Tensor            # [B, C] float32
    probs_lb: torch.Tensor             # [B, C] its softmax
    idx_ulb: torch.Tensor              # [N] indices into the unlabeled set, N = mu * B
    y_ulb: torch.Tensor                # [N] hidden truth, for monitoring only
    logits_weak: torch.Tensor          # [N, C] float32
    probs_weak: torch.Tensor           # [N, C] raw weak-view softmax
    probs_pseudo: torch.Tensor         # [N, C] distribution the pseudo-labels come from (debiased under DebiasPL)
    pseudo_labels: torch.Tensor        # [N]
    mask: torch.Tensor                 # [N] float, 1 where the pseudo-label counts in the loss
    class_marginal_before: torch.Tensor  # [C] q_hat the pseudo-labels were debiased with
    class_marginal: torch.Tensor       # [C] q_hat after this step
    loss: torch.Tensor                 # scalar
    loss_sup: torch.Tensor             # scalar
    loss_unsup: torch.Tensor           # scalar
    lr: float
    features_lb: torch.Tensor | None = None    # [B, D] penultimate features, when a hook asks for them
    features_weak: torch.Tensor | None = None  # [N, D]


class Hook:
    """Base class: every event is a no-op; override the ones you need. Called in config order."""

    name: ClassVar[str] = ""
    needs_features: ClassVar[bool] = False  # ask the trainer for penultimate features in StepRecord

    def __init__(self, options: Any):
        self.options = options

    def on_train_start(self, context: RunContext) -> None:
        """Before the first step of this session (fresh or resumed); state is already loaded."""

    def on_step_end(self, record: StepRecord) -> None:
        """After every optimizer step. Must not sync with the device except at the hook's own interval."""

    def on_evaluation(self, step: int, metrics: dict) -> None:
        """After each test-set evaluation, with its metrics."""

    def on_train_end(self, step: int) -> None:
        """When training stops in this session (finished or paused with --until-step)."""

    def on_save_checkpoint(self) -> dict:
        """State to keep in the checkpoint so a resumed run continues this hook's curves."""
        return {}

    def on_load_checkpoint(self, state: dict) -> None:
        """Restore what on_save_checkpoint returned (before on_train_start)."""


class IntervalHook(Hook):
    """A hook that sums statistics on the device every step, logs them every `options.interval` steps
    (and at the last step), and draws figures of the last logged interval every
    `options.figure_interval` steps and at the end: the lifecycle of the drift and uncertainty hooks.

    Subclasses say what to sum (`empty_sums`, `accumulate`), what to log from an interval's sums
    (`log_interval`, returning what the figures need, or None when the interval had nothing) and how
    to draw it (`draw_figures`). Sums, the last interval and the last figure step go into checkpoints.
    """

    def __init__(self, options: Any):
        super().__init__(options)
        self.sums: dict = {}
        self._last_interval: tuple[int, Any] | None = None  # (step, what log_interval returned)
        self._figures_step = -1

    def empty_sums(self) -> dict:
        """Zeroed sums on self.context.device (nested dicts of tensors are fine)."""
        raise NotImplementedError

    def accumulate(self, sums: dict, record: StepRecord) -> None:
        """Add one step to `sums`, in place, on the device (no host sync)."""
        raise NotImplementedError

    def log_interval(self, step: int, sums: dict, record: StepRecord) -> Any:
        """Log an interval's sums (already on the host); return what draw_figures needs, or None."""
        raise NotImplementedError

    def draw_figures(self, step: int, logged: Any) -> None:
        """Figures of the interval that ended at `step`."""

    def on_train_start(self, context: RunContext) -> None:
        self.context = context
        # a resumed run has its sums from the checkpoint
        self.sums = _map_tensors(lambda t: t.to(context.device), self.sums) if self.sums else self.empty_sums()

    def on_step_end(self, record: StepRecord) -> None:
        self.accumulate(self.sums, record)
        if record.step % self.options.interval == 0 or record.step == self.context.total_steps:
            # the host sync of the interval happens here
            sums, self.sums = _map_tensors(torch.Tensor.cpu, self.sums), self.empty_sums()
            logged = self.log_interval(record.step, sums, record)
            if logged is not None:
                self._last_interval = (record.step, logged)
        if record.step % self.options.figure_interval == 0:
            self._draw_figures()

    def on_train_end(self, step: int) -> None:
        if step == self.context.total_steps:  # a pause adds no figure an uninterrupted run would not have
            self._draw_figures()

    def _draw_figures(self) -> None:
        """Of the last logged interval, once per interval."""
        if self._last_interval is None or self._last_interval[0] == self._figures_step:
            return
        self._figures_step = self._last_interval[0]
        self.draw_figures(*self._last_interval)

    def on_save_checkpoint(self) -> dict:
        return {"sums": _map_tensors(torch.Tensor.cpu, self.sums), "last_interval": self._last_interval,
                "figures_step": self._figures_step}

    def on_load_checkpoint(self, state: dict) -> None:
        self.sums = _map_tensors(lambda t: t, state["sums"])
        self._last_interval, self._figures_step = state["last_interval"], state["figures_step"]


def _map_tensors(function, tree: dict) -> dict:
    """The same nesting of dicts with `function` applied to every tensor."""
    return {key: _map_tensors(function, value) if isinstance(value, dict) else function(value)
            for key, value in tree.items()}
