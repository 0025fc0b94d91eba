"""The image sets every source produces: uint8 images with labels and stable sample ids.

`images` is a uint8 tensor [N, C, H, W] in memory, or a `LazyImages` that reads what an index
asks for: rows of the decoded cache's memory map (MappedImages), or files decoded on the fly
(data.storage: stream). Consumers index it
like a tensor (an int, a slice or an index tensor) and never ask which it is.
"""

from __future__ import annotations

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


class MappedImages:
    """Rows `index` of a memory-mapped images tensor (the decoded cache), read from the map when indexed.

    Subsets stay views of the file instead of copies in RAM: the pages a batch reads are shared
    with the page cache (and with other jobs mapping the same file).
    """

    decodes_on_read = False

    def __init__(self, mapped: torch.Tensor, index: torch.Tensor):
        self.mapped, self.index = mapped, index
        self.shape = torch.Size([len(index), *mapped.shape[1:]])

    def __len__(self) -> int:
        return len(self.index)

    def select(self, indices: np.ndarray) -> "MappedImages":
        return MappedImages(self.mapped, self.index[torch.as_tensor(indices, dtype=torch.long)])

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, tuple):  # images[i, c, y, x]: the rows first, then a tensor index of the rest
            rows = self[key[0]]
            return rows[key[1:]] if rows.ndim < len(self.shape) else rows[(slice(None), *key[1:])]
        if isinstance(key, (int, np.integer)) or (isinstance(key, torch.Tensor) and key.ndim == 0):
            return self.mapped[int(self.index[int(key)])]
        rows = self.index[key] if isinstance(key, slice) else self.index[torch.as_tensor(key, dtype=torch.long)]
        return self.mapped[rows]


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
