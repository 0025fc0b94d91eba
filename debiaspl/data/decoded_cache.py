"""The decoded-image cache: an image folder's split decoded once into a memory-mapped .npy file.

The file's name carries a key over everything its pixels depend on: each file's path (relative to
the folder), size and modification time, the stored size S, the cache format and Pillow's version.
A run whose folder matches maps the file and starts without decoding; any change (a file added,
removed, replaced or touched) gives another key, so a stale cache is never read, only rebuilt, and
the stale file of that folder and split is removed after the new one is in place.

The file is written under a temporary name and renamed into place when complete, so a crash or a
kill mid-decode leaves no half-written cache that a later run could map; concurrent jobs that
build the same cache each write their own temporary file, and the last rename wins with equal
pixels. The map is copy-on-write: nothing a run does in memory can change the file.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import socket
from pathlib import Path
from typing import Callable

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, stale caches are removed as before
    fcntl = None

import numpy as np
import torch

from debiaspl.data.image_folder import decode_into, stored_shape
from debiaspl.data.image_set import MappedImages, map_npy, release_pages
from debiaspl.errors import UserError

CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/debiaspl, else ~/.cache/debiaspl."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "debiaspl"


def cache_key(files: list[Path], ids: list[str], size: int) -> str:
    """32 hex digits over the file list (relative ids, sizes, mtimes), S, the format and Pillow's version."""
    import PIL

    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps({"format": CACHE_FORMAT, "size": size, "mode": "RGB", "pillow": PIL.__version__}).encode())
    for path, sample_id in zip(files, ids):
        stat = path.stat()
        digest.update(f"{sample_id}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def cache_prefix(root: Path, split: str, size: int) -> str:
    """The part of a cache file's name that its later versions share: folder, split and S.

    The folder's own path is in it (as a digest), so the stale-file cleanup after a build removes
    only this folder's older caches, not those of another folder with the same name (/a/data and
    /b/data); a folder that moves decodes again.
    """
    folder_digest = hashlib.blake2b(str(root.resolve()).encode(), digest_size=4).hexdigest()
    return f"{_slug(root)}-{folder_digest}-{split}-{size or 'native'}"


def cached_images(root: Path, split: str, files: list[Path], ids: list[str], size: int,
                  cache_dir: str = "") -> MappedImages:
    """The split's images [N, 3, H, W] uint8, memory-mapped from the cache (decoded into it first if needed)."""
    folder = Path(cache_dir) if cache_dir else default_cache_dir()
    prefix = cache_prefix(root, split, size)
    path = folder / f"{prefix}-{cache_key(files, ids, size)}.npy"
    if not path.exists():
        _build(path, prefix, files, size, f"decoding {root / split} into {path.parent}")
    try:
        # a spawned (not forked) loader worker maps the file again by its name: while these images
        # live, another job's build must leave it (a later build removes it)
        lock = _file_lock(path, exclusive=False)
        images = MappedImages.open(path)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the decoded cache {path} ({exc}); delete it and run again") from None
    mapped = images.mapped
    if mapped.dtype != torch.uint8 or mapped.ndim != 4 or mapped.shape[0] != len(files) or mapped.shape[1] != 3:
        raise UserError(f"the decoded cache {path} holds {mapped.dtype} {list(mapped.shape)}, not the "
                        f"{len(files)} RGB images of {root / split}; delete it and run again")
    images.lock = lock
    return images


def remembered_channel_stats(image_sets: list, measure: Callable[[list], tuple]) -> tuple:
    """`measure(image_sets)` (the channel statistics), remembered beside the decoded cache the sets are rows of.

    A pass over a large cache's pixels takes longer than everything else a run does before its first
    step (45 s for ImageNet-LT's size on two cores), so the result is kept in `<cache>.stats.json`,
    keyed by the rows each set takes, and a later run of the same split reads it back: the same
    floats, so the same run. Sets that are not all rows of one cache file are measured every time.
    """
    paths = {getattr(images, "path", None) for images in image_sets}
    if len(paths) != 1 or None in paths:
        return measure(image_sets)
    memo = _stats_path(Path(paths.pop()))
    digest = hashlib.blake2b(digest_size=16)
    for images in image_sets:
        digest.update(images.index.numpy().astype("<i8").tobytes() + b"|")
    key = digest.hexdigest()
    try:
        remembered = json.loads(memo.read_text())
    except (OSError, ValueError):  # none yet, or unreadable: measured and written anew
        remembered = {}
    entry = remembered.get(key) if isinstance(remembered, dict) else None
    if isinstance(entry, dict) and set(entry) == {"mean", "std"}:
        return tuple(map(float, entry["mean"])), tuple(map(float, entry["std"]))
    remembered = remembered if isinstance(remembered, dict) else {}
    mean, std = measure(image_sets)
    remembered[key] = {"mean": list(mean), "std": list(std)}
    temporary = memo.with_name(f"{memo.name}.partial-{socket.gethostname()}-{os.getpid()}")
    try:
        temporary.write_text(json.dumps(remembered))
        os.replace(temporary, memo)
    except OSError:  # a read-only cache still trains; it measures again next time
        _discard(temporary)
    return mean, std


def _stats_path(cache: Path) -> Path:
    return cache.with_name(f"{cache.stem}.stats.json")


def _build(path: Path, prefix: str, files: list[Path], size: int, description: str) -> None:
    shape = (len(files), *stored_shape(files, size))
    temporary = path.with_name(f"{path.stem}.partial-{socket.gethostname()}-{os.getpid()}.npy")
    building = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned(path.parent, prefix)
        building = _file_lock(temporary, exclusive=True)  # the temporary is in use until this closes
        header = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.uint8, shape=shape)  # header and size
        del header
        _reserve_blocks(temporary)
        _decode_into_file(temporary, files, size, description)
        os.replace(temporary, path)
    except OSError as exc:
        _discard(temporary)
        needed = int(np.prod(shape)) / 2**20
        hint = (f"it needs {needed:.0f} MiB free" if exc.errno == errno.ENOSPC else
                "that folder must be writable")
        raise UserError(f"cannot write the decoded cache {path} ({exc.strerror or exc}): {hint}; set data.cache_dir "
                        f"to another folder, or data.storage: memory to decode on every run") from None
    except BaseException:
        _discard(temporary)
        raise
    finally:
        if building is not None:
            building.close()
    for stale in path.parent.glob(f"{prefix}-*.npy"):  # earlier versions of this folder and split
        if stale != path and ".partial-" not in stale.name and not _in_use(stale):
            stale.unlink(missing_ok=True)
            _stats_path(stale).unlink(missing_ok=True)


def _file_lock(path: Path, exclusive: bool):
    """`path` opened (a builder's temporary: created) and flock-ed, or None where there are no flocks."""
    handle = open(path, "ab" if exclusive else "rb")  # noqa: SIM115 - the caller closes it, releasing the lock
    if fcntl is None:
        handle.close()
        return None
    fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
    return handle


def _in_use(cache: Path) -> bool:
    """Whether a process (this one included) holds a lock on the file: a reader's or a builder's."""
    if fcntl is None:
        return False
    try:
        with open(cache, "rb") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when closed
    except BlockingIOError:
        return True
    except OSError:  # gone already, or unreadable: nothing to protect
        return False
    return False


def _decode_into_file(temporary: Path, files: list[Path], size: int, description: str) -> None:
    out, pages = map_npy(temporary, writable=True)
    try:
        # each chunk's written pages leave this process's RSS (the kernel writes them back): a
        # 17 GB folder's first run would otherwise count its whole cache against a job's RSS limit
        decode_into(out, files, size, description, after_chunk=lambda: release_pages(pages))
        pages.flush()
    except (UserError, KeyboardInterrupt) as exc:
        # The traceback's frames hold `out`, so the map of the whole reserved file (which the caller
        # deletes) would live as long as the error: a notebook keeping its last error would keep the
        # disk space. These errors say what they need in their message; the frames go.
        raise exc.with_traceback(None)
    finally:
        del out
        try:
            pages.close()
        except BufferError:  # another error's frames still hold the array: it goes with them
            pass


def _reserve_blocks(path: Path) -> None:
    """Allocate the (sparse) file's disk blocks before any pixel is written. Written through a memory
    map, a page the disk has no room for kills the process with SIGBUS mid-decode, leaving the
    temporary behind; reserved here, a full disk is ENOSPC, a one-line error naming the file."""
    if not hasattr(os, "posix_fallocate"):  # macOS, Windows
        return
    with open(path, "r+b") as handle:
        try:
            os.posix_fallocate(handle.fileno(), 0, os.fstat(handle.fileno()).st_size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):  # a file system without it
                raise


def _discard(temporary: Path) -> None:
    try:
        temporary.unlink(missing_ok=True)
    except OSError:  # its folder could not be made: there is nothing to remove
        pass


def _remove_abandoned(folder: Path, prefix: str) -> None:
    """Temporary files of builds on this host whose process is gone (killed mid-decode).

    A live builder holds its temporary's lock; the owner's pid alone would not do, since a builder in
    another PID namespace (a container sharing the cache folder) has a pid this process cannot see.
    Without flocks (Windows) the pid decides.
    """
    host = socket.gethostname()
    for partial in folder.glob(f"{prefix}-*.partial-*.npy"):
        owner_host, _, pid = partial.name.rsplit(".partial-", 1)[1].removesuffix(".npy").rpartition("-")
        if owner_host == host and pid.isdigit() and not (_in_use(partial) if fcntl else _alive(int(pid))):
            partial.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _slug(root: Path) -> str:
    """A readable file-name part for the folder (the digest of its path beside it tells folders apart)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", root.resolve().name or "root")[:60]
