"""Where a run's numbers go: TensorBoard event files and metrics.jsonl in the run folder.

On resume from step k, both drop what the interrupted run wrote after k (TensorBoard's
purge_step; metrics.jsonl rewritten), so curves continue without duplicates.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from debiaspl.metrics.plots import save_figure
from debiaspl.files import write_text
from debiaspl.run_folder import METRICS_NAME


class RunLog:
    def __init__(self, run_dir: Path, resume_step: int):
        self.metrics_path = run_dir / METRICS_NAME
        if self.metrics_path.exists():
            _truncate_after(self.metrics_path, resume_step)
        # Events at resume_step itself were written before that checkpoint and stay.
        self.writer = SummaryWriter(str(run_dir), purge_step=resume_step + 1)
        self._metrics_file = open(self.metrics_path, "a")
        self._layout: dict[str, dict] = {}  # the Custom Scalars layout written so far

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """One TensorBoard scalar per tag (`group/name`) and one metrics.jsonl line for the lot."""
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        clean = {tag: (value if math.isfinite(value) else None) for tag, value in values.items()}
        self._metrics_file.write(json.dumps({"step": step, **clean}) + "\n")
        self._metrics_file.flush()

    def text(self, tag: str, text: str, step: int = 0) -> None:
        self.writer.add_text(tag, text, step)

    def histogram(self, tag: str, counts: list[int], edges: list[float], step: int) -> None:
        """A histogram already binned (counts [K], edges [K + 1]); an empty one is written too (nothing passed)."""
        total = sum(counts)
        centers = [(low + high) / 2 for low, high in zip(edges[:-1], edges[1:])]
        self.writer.add_histogram_raw(
            tag, min=edges[0], max=edges[-1], num=total, sum=sum(c * x for c, x in zip(counts, centers)),
            sum_squares=sum(c * x * x for c, x in zip(counts, centers)), bucket_limits=list(edges[1:]),
            bucket_counts=list(counts), global_step=step)

    def figure(self, tag: str, figure, step: int, png_path: Path | None = None) -> None:
        """A matplotlib figure as a TensorBoard image (and a PNG file when a path is given)."""
        if png_path is not None:
            save_figure(figure, png_path)
        self.writer.add_figure(tag, figure, step, close=True)

    def custom_scalars(self, layout: dict) -> None:
        """Add categories to TensorBoard's Custom Scalars layout (several tags' curves on one chart).

        TensorBoard shows one layout per run, the last written, so each call writes the merge of
        every category given so far: hooks each add their own without hiding the others'.
        """
        for category, charts in layout.items():
            self._layout.setdefault(category, {}).update(charts)
        self.writer.add_custom_scalars(self._layout)

    def close(self) -> None:
        self.writer.close()
        self._metrics_file.close()


class NullLog:
    """The RunLog of the processes that write nothing (all but rank 0 under torchrun)."""

    def scalars(self, step, values) -> None: ...
    def text(self, tag, text, step=0) -> None: ...
    def histogram(self, tag, counts, edges, step) -> None: ...
    def figure(self, tag, figure, step, png_path=None) -> None: ...
    def custom_scalars(self, layout) -> None: ...
    def close(self) -> None: ...


def _truncate_after(path: Path, step: int) -> None:
    kept = [line for line in path.read_text().splitlines() if _step_of(line) <= step]
    write_text(path, "".join(line + "\n" for line in kept))


def _step_of(line: str) -> float:
    """The step of a metrics line; a half-written line (a crash mid-write) sorts after every step."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")
