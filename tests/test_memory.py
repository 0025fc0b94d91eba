"""Evaluations hand freed memory back (debiaspl/engine/memory.py): during one, glibc maps blocks of a
MiB or more whole (so freeing them unmaps them); after it, such blocks come from the heap again."""
import ctypes

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


@pytest.mark.skipif(_glibc() is None or not hasattr(_glibc(), "mallinfo2"), reason="needs glibc >= 2.33")
def test_evaluation_buffers_are_mapped_whole_and_training_ones_come_from_the_heap():
    mib = 1 << 20
    with freed_memory_returned():
        before = mapped_bytes()
        buffer = torch.empty(2 * mib, dtype=torch.uint8)
        assert mapped_bytes() - before >= 2 * mib
        del buffer
        assert mapped_bytes() == before  # unmapped at once: nothing kept
    before = mapped_bytes()
    buffer = torch.empty(2 * mib, dtype=torch.uint8)
    assert mapped_bytes() == before  # from the heap, as glibc's own steady state has it
    del buffer


def test_the_body_runs_and_errors_pass_through():
    ran = []
    with pytest.raises(KeyError):
        with freed_memory_returned():
            ran.append(1)
            raise KeyError("x")
    assert ran == [1]
