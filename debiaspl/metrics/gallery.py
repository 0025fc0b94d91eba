"""Galleries: the images behind a ranking, in rows, each captioned with its label, pseudo-label and score.

Every ranking the library produces (cartography regions, self-influence, uncertain pseudo-labels,
OOD scores, `select` picks, TracIn proponents) ends in one of these, written as a PNG with a CSV of
the same entries beside it (what each tile shows, for scripts and tests).
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from debiaspl.files import write_csv
from debiaspl.metrics.plots import _figure, save_figure


@dataclass(frozen=True)
class GalleryEntry:
    """One tile: an image and what is known about it (None: not known or not meaningful here)."""

    sample_id: str
    image: torch.Tensor                # [C, H, W] uint8 (C = 1 or 3)
    label: str | None = None           # class name: the given label, or the hidden truth of an unlabeled image
    pseudo_label: str | None = None    # class name of the pseudo-label (or prediction) the ranking is about
    score: float | None = None
    score_name: str = "score"
    pseudo_name: str = "pseudo"        # what the second class is: a pseudo-label, a raw argmax, a prediction


@dataclass(frozen=True)
class GalleryRow:
    title: str
    entries: tuple[GalleryEntry, ...]


def entries_from(images: torch.Tensor, indices, sample_ids: list[str], class_names: list[str], *,
                 labels=None, pseudo_labels=None, scores=None, index_scores=None, score_name: str = "score",
                 pseudo_name: str = "pseudo") -> tuple[GalleryEntry, ...]:
    """GalleryEntries for rows `indices` of a set: images [N, C, H, W] uint8, sample_ids [N], and optional
    per-sample class indices `labels` / `pseudo_labels` [N] and either per-sample `scores` [N] or
    `index_scores` [len(indices)], one per index in order."""
    indices = [int(i) for i in indices]
    if scores is not None and index_scores is not None:
        raise ValueError("give scores (per sample) or index_scores (per index), not both")
    per_sample = None if scores is None else np.asarray(torch.as_tensor(scores).detach().cpu().double())
    per_index = None if index_scores is None else np.asarray(torch.as_tensor(index_scores).detach().cpu().double())
    if per_index is not None and len(per_index) != len(indices):
        raise ValueError(f"index_scores has {len(per_index)} values for {len(indices)} indices")

    def name_of(values, i):
        return None if values is None else class_names[int(values[i])]

    def score_of(position, i):
        if per_index is not None:
            return float(per_index[position])
        return None if per_sample is None else float(per_sample[i])

    return tuple(GalleryEntry(sample_ids[i], images[i], name_of(labels, i), name_of(pseudo_labels, i),
                              score_of(position, i), score_name, pseudo_name)
                 for position, i in enumerate(indices))


def caption(entry: GalleryEntry) -> str:
    """Up to three short lines: the label, the pseudo-label, the score."""
    lines = []
    if entry.label is not None:
        lines.append(f"label: {entry.label}")
    if entry.pseudo_label is not None:
        lines.append(f"{entry.pseudo_name}: {entry.pseudo_label}")
    if entry.score is not None:
        lines.append(f"{entry.score_name}: {_format_score(entry.score)}")
    return "\n".join(lines)


def gallery_figure(rows: list[GalleryRow], title: str, max_columns: int = 10):
    """One row of tiles per GalleryRow (at most `max_columns` each), its title on the left."""
    columns = max([min(len(row.entries), max_columns) for row in rows] + [1])
    tile, width = 1.35, 2.2 + 1.35 * max(columns, 6)
    title = textwrap.fill(title, width=int(width * 11))  # about 11 characters of 10 pt text per inch
    header = 0.55 + 0.2 * title.count("\n")
    figure = _figure(figsize=(width, header + 0.35 + (tile + 0.6) * max(len(rows), 1)))
    grid = figure.add_gridspec(max(len(rows), 1), columns + 1, width_ratios=[1.6] + [1] * columns,
                               left=0.01, right=0.99 * (2.2 + tile * columns) / width,
                               top=1 - (header + 0.3) / figure.get_figheight(), bottom=0.02, hspace=0.55, wspace=0.08)
    figure.suptitle(title, fontsize=10, y=1 - 0.1 / figure.get_figheight(), va="top")
    for r, row in enumerate(rows):
        label_axes = figure.add_subplot(grid[r, 0])
        label_axes.axis("off")
        label_axes.text(0.98, 0.5, row.title, ha="right", va="center", fontsize=8, wrap=True,
                        transform=label_axes.transAxes)
        if not row.entries:
            label_axes.text(0.98, 0.15, "(none)", ha="right", va="center", fontsize=7, color="gray",
                            transform=label_axes.transAxes)
        if len(row.entries) > max_columns:
            label_axes.text(0.98, 0.15, f"(first {max_columns} of {len(row.entries)}; all in the CSV)", ha="right",
                            va="center", fontsize=6.5, color="gray", transform=label_axes.transAxes)
        for c, entry in enumerate(row.entries[:max_columns]):
            axes = figure.add_subplot(grid[r, c + 1])
            image = entry.image.detach().cpu()
            if image.shape[0] == 1:
                axes.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            else:
                axes.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
            axes.set_xticks([])
            axes.set_yticks([])
            axes.set_title(caption(entry), fontsize=6.5, pad=2, loc="left")
    return figure


def gallery_columns(rows: list[GalleryRow]) -> dict[str, list]:
    """The CSV beside a gallery: one line per tile, in the figure's order."""
    table = {"row": [], "position": [], "sample_id": [], "label": [], "pseudo_label": [], "pseudo_name": [],
             "score_name": [], "score": []}
    for row in rows:
        for position, entry in enumerate(row.entries, start=1):
            for key, value in (("row", row.title), ("position", position), ("sample_id", entry.sample_id),
                               ("label", entry.label or ""), ("pseudo_label", entry.pseudo_label or ""),
                               ("pseudo_name", entry.pseudo_name if entry.pseudo_label is not None else ""),
                               ("score_name", entry.score_name if entry.score is not None else ""),
                               ("score", "" if entry.score is None else entry.score)):
                table[key].append(value)
    return table


def split_rows(entries: tuple[GalleryEntry, ...], per_row: int = 10, what: str = "ranks") -> list[GalleryRow]:
    """A ranking's entries as rows of `per_row`, titled "ranks 1-10", "ranks 11-20", ..."""
    return [GalleryRow(f"{what} {start + 1}-{start + len(entries[start:start + per_row])}", entries[start:start + per_row])
            for start in range(0, len(entries), per_row)]


def write_gallery(path: Path, rows: list[GalleryRow], title: str, max_columns: int = 10):
    """`path`.png and `path`.csv (path without suffix); returns the figure (for TensorBoard) after saving it."""
    figure = gallery_figure(rows, title, max_columns)
    save_figure(figure, path.with_suffix(".png"))
    write_csv(path.with_suffix(".csv"), gallery_columns(rows))
    return figure


def _format_score(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-3):
        return f"{value:.2e}"
    return f"{value:.3f}"
