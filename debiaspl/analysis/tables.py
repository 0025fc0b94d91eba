"""Columns of per-sample results written as CSV, atomically (temporary file + rename)."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path


def write_csv(path: Path, columns: dict[str, list]) -> None:
    """One column per key, all of equal length; floats with 6 significant digits."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    for row in zip(*columns.values()):
        writer.writerow([f"{value:.6g}" if isinstance(value, float) else value for value in row])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(buffer.getvalue())
    os.replace(tmp, path)
