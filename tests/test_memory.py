"""Evaluations hand freed memory back (debiaspl/engine/memory.py): during one, glibc maps blocks of a
MiB or more whole (so freeing them unmaps them); after it, such blocks come from the heap again."""
import ctypes
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from debiaspl.engine.memory import _glibc, freed_memory_returned


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def mapped_bytes() -> int:
    """glibc's bytes in blocks it mapped with mmap (mallinfo2's hblkhd)."""
    libc = _glibc()
    libc.mallinfo2.restype = MallInfo2
    return libc.mallinfo2().hblkhd


CHECK = """
import torch
from debiaspl.engine.memory import freed_memory_returned
from tests.test_memory import mapped_bytes
mib = 1 << 20
block = torch.empty(16 * mib, dtype=torch.uint8)
del block  # freed as a training step frees its activations: glibc's threshold rises to 16 MiB
with freed_memory_returned():
    before = mapped_bytes()
    buffer = torch.empty(8 * mib, dtype=torch.uint8)
    assert mapped_bytes() - before >= 8 * mib, "not mapped during the evaluation"
    del buffer
    assert mapped_bytes() == before, "kept after the evaluation freed it"
before = mapped_bytes()
buffer = torch.empty(8 * mib, dtype=torch.uint8)
assert mapped_bytes() == before, "mapped after the evaluation"
print("ok")
"""


@pytest.mark.skipif(_glibc() is None or not hasattr(_glibc(), "mallinfo2"), reason="needs glibc >= 2.33")
def test_evaluation_buffers_are_mapped_whole_and_training_ones_come_from_the_heap():
    # In a fresh process: glibc serves a request from a free heap block when it has one, whatever the
    # threshold, and a long test session's heap has many.
    proc = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_the_body_runs_and_errors_pass_through():
    ran = []
    with pytest.raises(KeyError):
        with freed_memory_returned():
            ran.append(1)
            raise KeyError("x")
    assert ran == [1]
