"""Columns of per-sample results written as CSV, atomically (temporary file + rename)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from debiaspl.run_folder import write_text


def write_csv(path: Path, columns: dict[str, list]) -> None:
    """One column per key, all of equal length; floats with 6 significant digits."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    for row in zip(*columns.values()):
        writer.writerow([f"{value:.6g}" if isinstance(value, float) else value for value in row])
    write_text(path, buffer.getvalue())
