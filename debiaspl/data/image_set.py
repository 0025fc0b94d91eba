"""The image sets every source produces: uint8 images with labels and stable sample ids.

`images` is a uint8 tensor [N, C, H, W] in memory, or a `LazyImages` that reads what an index
asks for: rows of the decoded cache's memory map (MappedImages), or files decoded on the fly
(data.storage: stream). Consumers index it
like a tensor (an int, a slice or an index tensor) and never ask which it is.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from typing import Protocol, Union

import numpy as np
import torch


class LazyImages(Protocol):
    """Images read when indexed: images[i] -> [C, H, W], images[a:b] or images[index] -> [n, C, H, W] uint8."""

    shape: torch.Size      # [N, C, H, W]
    decodes_on_read: bool  # True: every read decodes files (reading all of them is a pass over the folder)

    def __len__(self) -> int: ...
    def __getitem__(self, key) -> torch.Tensor: ...
    def select(self, indices: np.ndarray) -> "LazyImages":
        """The images at `indices`, still undecoded."""
        ...


Images = Union[torch.Tensor, LazyImages]


def map_npy(path: str | os.PathLike, writable: bool = False) -> tuple[np.ndarray, mmap.mmap]:
    """A .npy file memory-mapped as an array, with the map itself (to hand its pages back).

    Read-only use maps it copy-on-write (writes stay in this process's memory); `writable` maps it
    shared, so writes reach the file.
    """
    with open(path, "r+b" if writable else "rb") as file:
        version = np.lib.format.read_magic(file)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read_header is None:
            raise ValueError(f".npy format version {version} is not one this reader knows")
        shape, fortran_order, dtype = read_header(file)
        if fortran_order:
            raise ValueError("the array is stored in Fortran order")
        offset = file.tell()
        pages = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_WRITE if writable else mmap.ACCESS_COPY)
    count = int(np.prod(shape))
    if offset + count * dtype.itemsize > len(pages):
        raise ValueError(f"the file is truncated: {len(pages)} bytes for {list(shape)} {dtype}")
    return np.frombuffer(pages, dtype=dtype, count=count, offset=offset).reshape(shape), pages


def release_pages(pages: mmap.mmap | None) -> None:
    """Drops a file map's pages from this process's resident memory; the page cache keeps them (Linux, BSD)."""
    if pages is not None and hasattr(mmap, "MADV_DONTNEED"):
        pages.madvise(mmap.MADV_DONTNEED)  # file-backed: a later read is a minor fault, a write is not lost


class MappedImages:
    """Rows `index` of a memory-mapped images tensor (the decoded cache), read from the map when indexed.

    Subsets stay views of the file instead of copies in RAM: the pages a batch reads are shared
    with the page cache (and with other jobs mapping the same file). With `pages`, the map they
    belong to, every read hands its pages back to the page cache once the rows are copied out, so
    the process's resident memory holds the rows of one read, not every row ever read: over an
    epoch a mapped 17 GB folder would otherwise count 17 GB against a job's RSS limit. Reading a
    page again is a minor fault from the page cache, not a disk read.
    """

    decodes_on_read = False

    def __init__(self, mapped: torch.Tensor, index: torch.Tensor, pages: mmap.mmap | None = None,
                 path: str | os.PathLike | None = None, lock: object = None):
        self.mapped, self.index, self.pages, self.path = mapped, index, pages, path
        self.lock = lock  # an open file holding the cache's shared lock while any view of it lives
        self.shape = torch.Size([len(index), *mapped.shape[1:]])

    @classmethod
    def open(cls, path: str | os.PathLike, index: torch.Tensor | None = None) -> "MappedImages":
        array, pages = map_npy(path)
        mapped = torch.from_numpy(array)
        return cls(mapped, torch.arange(len(mapped)) if index is None else index, pages, path)

    def __reduce__(self):
        if self.path is None:
            return MappedImages, (self.mapped, self.index)
        return MappedImages.open, (self.path, self.index)  # a loader worker maps the file again, copying nothing

    def __len__(self) -> int:
        return len(self.index)

    def select(self, indices: np.ndarray) -> "MappedImages":
        return MappedImages(self.mapped, self.index[torch.as_tensor(indices, dtype=torch.long)], self.pages, self.path,
                            self.lock)

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, tuple):  # images[i, c, y, x]: the rows first, then a tensor index of the rest
            rows = self[key[0]]
            return rows[key[1:]] if rows.ndim < len(self.shape) else rows[(slice(None), *key[1:])]
        if isinstance(key, (int, np.integer)) or (isinstance(key, torch.Tensor) and key.ndim == 0):
            rows = self.mapped[int(self.index[int(key)])].clone()
        else:
            index = self.index[key] if isinstance(key, slice) else self.index[torch.as_tensor(key, dtype=torch.long)]
            rows = self.mapped[index]  # advanced indexing: a copy
        release_pages(self.pages)
        return rows


@dataclass(frozen=True)
class ImageSet:
    images: Images            # [N, C, H, W] uint8
    labels: torch.Tensor      # [N] int64
    sample_ids: list[str]     # [N] stable ids: the file path for image folders, "<split>/<index>" otherwise

    def subset(self, indices: np.ndarray) -> "ImageSet":
        index = torch.as_tensor(indices, dtype=torch.long)
        images = self.images[index] if isinstance(self.images, torch.Tensor) else self.images.select(np.asarray(indices))
        return ImageSet(images, self.labels[index], [self.sample_ids[i] for i in indices])

    @property
    def in_memory(self) -> bool:
        """False when images are decoded on the fly (reading them all costs a decode of every file)."""
        return not getattr(self.images, "decodes_on_read", False)


@dataclass(frozen=True)
class SourceData:
    train: ImageSet
    test: ImageSet
    class_names: list[str]
