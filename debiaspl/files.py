"""Writing result files atomically (temporary file + rename), so a crash never leaves half a file.

A leaf module: the trainer, the hooks and the offline verbs all write through it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import threading
from pathlib import Path


def write_text(path: Path, text: str | bytes) -> None:
    """Atomically (temporary file + rename); makes the folder.

    A reader never sees a half-written file. The temporary name is unique per process and thread, and
    is opened with plain `open` (not tempfile.mkstemp, which would make the file private to its owner)
    so the umask applies; a failed write leaves the old file and no temporary.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_bytes(text) if isinstance(text, bytes) else tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, payload: dict) -> None:
    """Atomically; NaN and inf become null."""
    write_text(path, json.dumps(_finite(payload), indent=2, allow_nan=False) + "\n")


def write_csv(path: Path, columns: dict[str, list]) -> None:
    """One column per key, all of equal length; floats with 6 significant digits."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    for row in zip(*columns.values()):
        writer.writerow([f"{value:.6g}" if isinstance(value, float) else value for value in row])
    write_text(path, buffer.getvalue())


def file_sha256(path: Path, chunk_bytes: int = 1 << 20) -> str:
    """The SHA-256 of a file, read in chunks (weights files run to hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def _finite(value):
    """Valid JSON has no NaN: non-finite floats become None, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value
