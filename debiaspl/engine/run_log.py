"""Where a run's numbers go: TensorBoard event files and metrics.jsonl in the run folder.

On resume from step k, both drop what the interrupted run wrote after k (TensorBoard's
purge_step; metrics.jsonl rewritten), so curves continue without duplicates; a run that starts
again from step 0 drops everything, the texts and hyperparameters written at step 0 included.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from debiaspl.files import write_text
from debiaspl.metrics.plots import figure_png
from debiaspl.run_folder import METRICS_NAME


class RunLog:
    def __init__(self, run_dir: Path, resume_step: int):
        self.metrics_path = run_dir / METRICS_NAME
        if self.metrics_path.exists():
            _truncate_after(self.metrics_path, resume_step)
        # Events at resume_step itself were written before that checkpoint and stay; with no checkpoint
        # (step 0) the run starts over and nothing stays.
        self.writer = SummaryWriter(str(run_dir), purge_step=resume_step + 1 if resume_step else 0)
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
        """A matplotlib figure as a TensorBoard image (and a PNG file when a path is given).

        Drawn once: the PNG bytes go to the file and, as they are, into the event file (SummaryWriter's
        add_figure would draw the figure a second time, which was half of the hooks' figure time).
        """
        png = figure_png(figure)
        if png_path is not None:
            write_text(png_path, png)
        width, height = _png_size(png)
        image = Summary.Image(height=height, width=width, colorspace=4, encoded_image_string=png)
        self.writer.file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)

    def custom_scalars(self, layout: dict) -> None:
        """Add categories to TensorBoard's Custom Scalars layout (several tags' curves on one chart).

        TensorBoard shows one layout per run, the last written, so each call writes the merge of
        every category given so far: hooks each add their own without hiding the others'.
        """
        for category, charts in layout.items():
            self._layout.setdefault(category, {}).update(charts)
        self.writer.add_custom_scalars(self._layout)

    def hparams_start(self, values: dict[str, Any]) -> None:
        """TensorBoard HParams: this run's hyperparameters (a session start), written when it starts, so that
        a run that stops before the end is listed with them too. Values: numbers, strings and bools."""
        _, start, _ = hparams(_hparam_values(values), {})
        self.writer.file_writer.add_summary(start, 0)

    def hparams_end(self, columns: dict[str, Any], metric_tags: list[str], differs: frozenset[str], step: int) -> None:
        """The HParams experiment and the end of this run's session, when it finished.

        The experiment names the table's columns: the hyperparameters (`columns`' keys; their values give
        only the types) and the metrics, scalar tags whose last value is the run's. TensorBoard shows one
        experiment for all the runs it reads, that of whichever run it finds first, so every run should
        write the same columns; `differs` (hyperparameters that vary between the runs) are shown first.
        """
        experiment, _, end = hparams(_hparam_values(columns), dict.fromkeys(metric_tags, 0.0))
        plugin_data = experiment.value[0].metadata.plugin_data
        content = HParamsPluginData.FromString(plugin_data.content)
        for info in content.experiment.hparam_infos:
            info.differs = info.name in differs
        plugin_data.content = content.SerializeToString()
        self.writer.file_writer.add_summary(experiment, step)
        self.writer.file_writer.add_summary(end, step)

    def hparams_failed(self, step: int) -> None:
        """End this run's session as failed (an error, a divergence, Ctrl-C), so the HParams tab shows
        'Failure' rather than 'Unknown'; a run killed outright still shows 'Unknown'."""
        _, _, end = hparams({"status": ""}, {})  # torch builds the summary, marked a success
        plugin_data = end.value[0].metadata.plugin_data
        content = HParamsPluginData.FromString(plugin_data.content)
        content.session_end_info.status = api_pb2.STATUS_FAILURE
        plugin_data.content = content.SerializeToString()
        self.writer.file_writer.add_summary(end, step)

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
    def hparams_start(self, values) -> None: ...
    def hparams_end(self, columns, metric_tags, differs, step) -> None: ...
    def hparams_failed(self, step) -> None: ...
    def close(self) -> None: ...


def _hparam_values(values: dict[str, Any]) -> dict[str, int | float | str]:
    """Bools as 'true' / 'false' (torch's hparams would record them as the numbers 1 and 0); other values
    than numbers and strings are left out."""
    return {key: ("true" if value else "false") if isinstance(value, bool) else value
            for key, value in values.items() if isinstance(value, (bool, int, float, str))}


def _truncate_after(path: Path, step: int) -> None:
    kept = [line for line in path.read_text().splitlines() if _step_of(line) <= step]
    write_text(path, "".join(line + "\n" for line in kept))


def _step_of(line: str) -> float:
    """The step of a metrics line; a half-written line (a crash mid-write) sorts after every step."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")


def _png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's header: the IHDR chunk, which the format puts right after the signature."""
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
