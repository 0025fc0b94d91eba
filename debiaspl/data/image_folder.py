"""Image files of any sizes and modes, decoded to uint8 RGB squares: listing, decoding, lazy sets.

An ImageFolder tree (`<root>/train/<class>/*`, `<root>/test/<class>/*`; debiaspl.data.datasets
loads it) can be held in three ways to hold the pixels (data.storage), all giving uint8 RGB images [N, 3, S, S]:
- cache: decoded once into a memory-mapped file (debiaspl.data.decoded_cache), so a later run of
  the same folder starts without decoding and RAM holds only the pages its batches touch;
- memory: decoded on every run into one preallocated tensor (no disk writes);
- stream: never decoded ahead; each batch decodes its files (FolderImages), for folders too large
  for any cache.
With data.image_size = S > 0 every image is resized (shorter side to S) and center-cropped to
S x S when decoded: the evaluation view, and the view the weak/strong augmentations start from.
"""

from __future__ import annotations

import os
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from debiaspl.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
STORAGES = ("cache", "memory", "stream")
_DECODE_CHUNK = 512  # images decoded between writes: bounds the RAM a decode needs


@dataclass(frozen=True)
class FolderOptions:
    """How an image folder is decoded and held (the data.image_size / storage / cache_dir keys)."""

    image_size: int = 0   # side S of the stored square; 0: the images' own size, which must be one size
    storage: str = "cache"
    cache_dir: str = ""   # "" : debiaspl.data.decoded_cache.default_cache_dir()


def class_folders(folder: Path) -> list[str]:
    if not folder.is_dir():
        raise UserError(f"image folder {folder} does not exist: data.root must contain train/<class>/ "
                        f"and test/<class>/ folders")
    names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise UserError(f"image folder {folder} has no class sub-folders")
    if len(names) == 1:
        # one class leaves nothing to pseudo-label between: every prediction would be that class
        raise UserError(f"image folder {folder} has a single class sub-folder ({names[0]}): semi-supervised "
                        f"learning needs at least two class folders, one per class")
    return names


def list_images(folder: Path, class_names: list[str]) -> tuple[list[Path], list[int]]:
    """The image files of every class folder, sorted, and their class indices."""
    files, labels = [], []
    for index, name in enumerate(class_names):
        members = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        files += members
        labels += [index] * len(members)
    if not files:
        raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    return files, labels


def stored_shape(files: list[Path], size: int) -> tuple[int, int, int]:
    """[C, H, W] every stored image has: S x S, or the first file's own size when size is 0."""
    if size:
        return 3, size, size
    with quiet_bomb_warnings():
        height, width, _ = decode_image(files[0], "RGB").shape
    return 3, height, width


def decode_all(files: list[Path], size: int, description: str) -> torch.Tensor:
    """Every file decoded into one preallocated uint8 tensor [N, 3, H, W] (no list of tensors to stack)."""
    out = torch.empty((len(files), *stored_shape(files, size)), dtype=torch.uint8)
    decode_into(out.numpy(), files, size, description)
    return out


def decode_into(out: np.ndarray, files: list[Path], size: int, description: str,
                after_chunk: Callable[[], None] | None = None) -> None:
    """Fill out [N, 3, H, W] uint8 (an array or a memory map) with the decoded `files`, chunk by chunk
    (`after_chunk` is called after each chunk's writes).

    Images of another size than out's are refused naming both files (size 0 keeps the images' own
    size, so a folder of mixed sizes needs data.image_size).
    """
    expected = out.shape[2:]

    def decode(path: Path) -> np.ndarray:
        return decode_image(path, "RGB", size)

    if len(files) >= 2000:  # a cluster job's log shows this line even without a progress bar
        print(f"{description}: {len(files)} images, once", file=sys.stderr, flush=True)
    mapped = decoding_map(files)
    with quiet_bomb_warnings(), \
            tqdm(total=len(files), desc=description, unit="img", disable=None, leave=False) as progress:
        for start in range(0, len(files), _DECODE_CHUNK):
            chunk = files[start:start + _DECODE_CHUNK]
            for offset, (path, image) in enumerate(zip(chunk, mapped(decode, chunk))):
                if image.shape[:2] != expected:
                    raise UserError(f"{path} is {image.shape[1]} x {image.shape[0]} pixels but {files[0]} is "
                                    f"{expected[1]} x {expected[0]}: set data.image_size (e.g. "
                                    f"data.image_size={min(expected)}) to resize and center-crop every image "
                                    f"to one square size")
                out[start + offset] = image.transpose(2, 0, 1)
            if after_chunk is not None:
                after_chunk()
            progress.update(len(chunk))


class FolderImages:
    """A LazyImages over image files: indexing decodes (resized and center-cropped to S x S) what it selects."""

    decodes_on_read = True

    def __init__(self, files: list[str], size: int, threaded: bool | None = None):
        self.files, self.size = files, size
        self.shape = torch.Size([len(files), 3, size, size])
        self.threaded = threaded  # decode on threads (threads_pay_off): read once, on the first batch

    def __len__(self) -> int:
        return len(self.files)

    def select(self, indices: np.ndarray) -> "FolderImages":
        return FolderImages([self.files[int(i)] for i in indices], self.size, self.threaded)

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, tuple):  # images[i, c, y, x]: the rows first, then a tensor index of the rest
            rows = self[key[0]]
            return rows[key[1:]] if rows.ndim < len(self.shape) else rows[(slice(None), *key[1:])]
        if isinstance(key, (int, np.integer)) or (isinstance(key, torch.Tensor) and key.ndim == 0):
            with quiet_bomb_warnings():
                return torch.from_numpy(decode_image(Path(self.files[int(key)]), "RGB", self.size)).permute(2, 0, 1)
        positions = range(*key.indices(len(self.files))) if isinstance(key, slice) else torch.as_tensor(key).tolist()
        chosen = [Path(self.files[i]) for i in positions]
        out = np.empty((len(chosen), 3, self.size, self.size), dtype=np.uint8)
        if self.threaded is None and chosen:
            self.threaded = threads_pay_off(chosen[0])
        mapped = _thread_pool().map if self.threaded and len(chosen) > 1 else map
        with quiet_bomb_warnings():
            for index, image in enumerate(mapped(lambda p: decode_image(p, "RGB", self.size), chosen)):
                out[index] = image.transpose(2, 0, 1)
        return torch.from_numpy(out)


# Pillow releases the GIL while it decodes pixels, not while it opens a file and converts the result.
# For small images that Python share dominates and threads only contend for the GIL. On 2 cores (a
# Xeon, 2026-12-03; benchmarks/decode_threads.py, benchmarks/results/decode_threads_xeon.json, medians
# of 3 rounds) 2 threads decoded the CIFAR-10 JPEGs 0.58x as fast as one thread, 64 px JPEGs 0.77x,
# 96 px 0.71x, 128 px 1.30x, 192 px 1.50x and 500 x 375 photos 1.09x (to 32 px) to 1.71x (to 224 px).
_THREADED_DECODE_PIXELS = 128 * 128


def decoding_map(files: list[Path]) -> Callable:
    """`map` for decoding these files in order: the process's threads where threads_pay_off for the
    first of them, else the builtin."""
    return _thread_pool().map if len(files) > 1 and threads_pay_off(files[0]) else map


def threads_pay_off(path: Path) -> bool:
    """Whether a folder whose images are like `path` decodes faster on threads: more than one core and
    at least _THREADED_DECODE_PIXELS pixels (read from the header alone)."""
    from PIL import Image

    if usable_cores() < 2:
        return False
    try:
        with quiet_bomb_warnings(), Image.open(path) as image:
            return image.width * image.height >= _THREADED_DECODE_PIXELS
    except (*_DECODE_ERRORS, Image.DecompressionBombError, Image.DecompressionBombWarning):
        return False  # decode_image names the file


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the OS has one: Linux), else the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


_POOLS: dict[int, ThreadPoolExecutor] = {}


def _thread_pool() -> ThreadPoolExecutor:
    """One decoding pool per process: a DataLoader worker forked from the trainer cannot use the trainer's threads."""
    pid = os.getpid()
    if pid not in _POOLS:
        _POOLS.clear()
        _POOLS[pid] = ThreadPoolExecutor(max_workers=max(1, min(4, usable_cores())))
    return _POOLS[pid]


# What Pillow raises for a file it cannot read or that is corrupt: UnidentifiedImageError and "image file
# is truncated" are OSErrors; broken headers and tiles surface as SyntaxError, ValueError or EOFError.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError)


def decode_image(path: Path, mode: str, size: int = 0) -> np.ndarray:
    """One image file as a uint8 array in Pillow `mode` ("RGB": [H, W, 3], "L": [H, W]).

    size > 0: resized so the shorter side is `size` (bilinear, antialiased) and center-cropped to
    size x size; a JPEG is decoded at the smallest DCT scale still at least that large, which makes
    photos several times faster to decode.

    A file that cannot be decoded, or whose header declares more than Image.MAX_IMAGE_PIXELS pixels,
    is a UserError naming it. Pillow itself raises only above twice that limit and merely warns
    between the two, then decodes the whole image; the header check below refuses both before a
    pixel is decoded, whatever the warning filters say.
    """
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            limit = Image.MAX_IMAGE_PIXELS
            if limit is not None and image.width * image.height > limit:
                raise UserError(f"image {path} is refused as a possible decompression bomb: it declares "
                                f"{image.width} x {image.height} = {image.width * image.height} pixels, over "
                                f"PIL.Image.MAX_IMAGE_PIXELS = {limit}; remove it or shrink it")
            if size and min(image.size) > size:
                image.draft(None, (size, size))  # JPEG only; a no-op for other formats
            converted = _eight_bit(image, path).convert(mode)
            if size and converted.size != (size, size):
                converted = ImageOps.fit(converted, (size, size), Image.Resampling.BILINEAR)
            return np.array(converted)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # the latter under -W error
        raise UserError(f"image {path} is refused as a possible decompression bomb: {exc}; remove it or shrink it") from None
    except _DECODE_ERRORS as exc:
        raise UserError(f"cannot decode image {path} ({type(exc).__name__}: {exc}); replace or remove it") from None


def _eight_bit(image, path: Path):
    """Pillow's image, with 16-bit gray (a 16-bit PNG or TIFF: modes I;16* and I) scaled to 8 bits.

    Pillow's convert clips such pixels at 255, which turns all but the darkest white. Floating-point
    pixels (mode F) have no range to scale from and are refused.
    """
    from PIL import Image

    if image.mode == "F":
        raise UserError(f"image {path} has floating-point pixels (Pillow mode F), which have no 8-bit range; "
                        f"save it as an 8- or 16-bit image")
    if image.mode != "I" and not image.mode.startswith("I;16"):
        return image
    pixels = np.asarray(image).astype(np.int64)
    return Image.fromarray((np.clip(pixels, 0, 65535) * 255 // 65535).astype(np.uint8))  # mode L


@contextmanager
def quiet_bomb_warnings() -> Iterator[None]:
    """Silence Pillow's DecompressionBombWarning (decode_image refuses those images itself, with one line).

    Enter it once around a whole folder, in the calling thread: the filters are process-wide, and
    entering catch_warnings in several threads at once would restore them out of order.
    """
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield
