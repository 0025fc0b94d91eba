"""Handing freed memory back to the system after evaluations (glibc only; elsewhere a no-op).

glibc raises its mmap threshold to the largest block a process has freed (up to 32 MiB), so after the
first training steps the evaluation's many batch-sized buffers come from the heap, and the heap keeps
what they freed: 0.16-0.32 GB more peak RSS in a 1-step run of the CPU config (README, "Your own image
folder"). During an evaluation the threshold goes back to glibc's starting 128 KiB, so those buffers are
mapped and unmapped whole; afterwards it is fixed at the 32 MiB the training steps had raised it to, and
the heap is trimmed.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
from contextlib import contextmanager
from typing import Iterator

M_MMAP_THRESHOLD = -3  # mallopt's parameter numbers, from glibc's malloc.h
EVALUATION_MMAP_THRESHOLD = 128 << 10  # glibc's starting value
TRAINING_MMAP_THRESHOLD = 32 << 20  # glibc's ceiling for its dynamic threshold on 64-bit systems


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 - both exist only in glibc
    except (OSError, AttributeError):
        return None
    return libc


@contextmanager
def freed_memory_returned() -> Iterator[None]:
    """Within: large blocks are mapped and unmapped whole. After: the heap is trimmed."""
    libc = _glibc()
    if libc is None:
        yield
        return
    libc.mallopt(M_MMAP_THRESHOLD, EVALUATION_MMAP_THRESHOLD)
    try:
        yield
    finally:
        libc.mallopt(M_MMAP_THRESHOLD, TRAINING_MMAP_THRESHOLD)
        libc.malloc_trim(0)
