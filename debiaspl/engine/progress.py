"""What a run prints while it trains: a tqdm bar on a terminal, else one timestamped line per logging interval.

A log file (a cluster job's, or any redirected stdout) gets lines a person can read without a
terminal: local time, step, loss, mask rate, learning rate, speed and the time left; evaluation
lines carry the same timestamp, with or without the bar.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime

from tqdm import tqdm


class Progress:
    """The trainer calls `advance` every step, `log` at each logging interval and `evaluation` after each
    evaluation. `bar`: logging.progress_bar. The bar is drawn on stderr when stderr is a terminal; the
    lines go to stdout when there is no bar (bar off, or stderr redirected) or stdout is not a terminal.
    `show`: False on all processes but rank 0, which print nothing."""

    def __init__(self, total_steps: int, start_step: int, end_step: int, name: str, bar: bool, show: bool = True):
        self.total_steps, self.start_step, self.end_step = total_steps, start_step, end_step
        self.started = time.perf_counter()
        self.bar = tqdm(total=total_steps, initial=start_step, desc=name, unit="step", dynamic_ncols=True) \
            if show and bar and sys.stderr.isatty() else None
        # `debiaspl train x.yaml | tee log.txt` or `> log.txt` alone: the bar stays on the terminal, the
        # lines go to the log
        self.lines = show and (self.bar is None or not sys.stdout.isatty())
        self.show = show

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        """At a logging step: the bar's loss and mask rate, or one line (train/loss, pseudo/mask_rate, train/lr,
        train/steps_per_second from `scalars`, and the time left at this session's mean speed, evaluations included)."""
        loss, mask = scalars["train/loss"], scalars["pseudo/mask_rate"]
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.3f}", mask=f"{mask:.2f}")
        if not self.lines:
            return
        done = step - self.start_step
        remaining = (self.end_step - step) * (time.perf_counter() - self.started) / max(done, 1)
        until = f" to step {self.end_step}" if self.end_step < self.total_steps else ""
        self._print(f"step {step}/{self.total_steps}  loss {loss:.3f}  mask {mask:.2f}  lr {scalars['train/lr']:.3g}  "
                    f"{scalars['train/steps_per_second']:.3g} steps/s  ETA {format_duration(remaining)}{until}")

    def evaluation(self, step: int, metrics: dict) -> None:
        if self.show:
            self._print(f"step {step}: top1 {metrics['top1']:.4f}  balanced {metrics['balanced_acc']:.4f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def _print(self, text: str) -> None:
        line = f"{timestamp()}  {text}"
        if self.bar is not None:
            self.bar.write(line, file=sys.stdout)  # above the bar, which stays at the bottom
        else:
            print(line, flush=True)  # a log file shows each line as it comes, not when a buffer fills


def timestamp() -> str:
    """Local time to the second, ISO 8601 with a space: '2026-12-02 17:03:11'."""
    return datetime.now().isoformat(sep=" ", timespec="seconds")


def format_duration(seconds: float) -> str:
    """3 -> '3s', 125 -> '2m05s', 84420 -> '23h27m', 200000 -> '2d07h'."""
    rest = max(int(round(seconds)), 0)
    days, rest = divmod(rest, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"
