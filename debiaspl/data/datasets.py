"""Image sources as uint8 image sets: CIFAR-10/100, ImageFolder trees, digits.

CIFAR and digits load into memory from their compact files; an image folder is held as
data.storage says (debiaspl.data.image_folder). Each loader returns the full train pool and the test set; the long-tailed split is drawn from the
train pool in debiaspl.data.prepare, so every source gets the same treatment.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from debiaspl.data.decoded_cache import cached_images
from debiaspl.data.image_folder import (IMAGE_SUFFIXES, STORAGES, FolderImages, FolderOptions, class_folders,
                                        decode_all, decode_image, list_images, quiet_bomb_warnings)
from debiaspl.data.image_set import ImageSet, SourceData
from debiaspl.errors import UserError


def load_cifar(root: str, download: bool, num_classes: int) -> SourceData:
    """CIFAR-10 or CIFAR-100 through torchvision (downloaded into `root` when allowed)."""
    from torchvision.datasets import CIFAR10, CIFAR100

    dataset_cls = CIFAR10 if num_classes == 10 else CIFAR100
    splits = {}
    for name, train in (("train", True), ("test", False)):
        try:
            dataset = dataset_cls(root, train=train, download=download)
        except Exception as exc:  # torchvision raises RuntimeError/URLError/OSError variants
            name_cls = dataset_cls.__name__
            raise UserError(
                f"could not load {name_cls} from data.root={root!r} ({type(exc).__name__}: {exc}). "
                f"Without network access, copy the python version (cifar-{num_classes}-python.tar.gz "
                f"extracted) into that folder, or use an ImageFolder copy with "
                f"--set data.dataset=imagefolder --set data.root=PATH") from None
        images = torch.from_numpy(np.ascontiguousarray(dataset.data)).permute(0, 3, 1, 2).contiguous()
        labels = torch.as_tensor(dataset.targets, dtype=torch.long)
        splits[name] = ImageSet(images, labels, [f"{name}/{i}" for i in range(len(labels))])
    return SourceData(splits["train"], splits["test"], list(dataset.classes))


def load_image_folder(root: str, download: bool = False, options: FolderOptions = FolderOptions()) -> SourceData:
    """Both splits of `<root>/train/<class>/*` and `<root>/test/<class>/*`, held as options.storage says
    (debiaspl.data.image_folder) and resized to options.image_size when it is set."""
    if options.storage not in STORAGES:
        raise UserError(f"data.storage = {options.storage!r}: must be one of {', '.join(STORAGES)}")
    if options.storage == "stream" and not options.image_size:
        raise UserError("data.storage = stream decodes each batch's files as it needs them, so it cannot check "
                        "ahead that they are one size: set data.image_size (the side they are resized and "
                        "center-cropped to)")
    base = Path(root)
    class_names = class_folders(base / "train")
    test_classes = class_folders(base / "test")
    if test_classes != class_names:
        missing = sorted(set(class_names) ^ set(test_classes))
        raise UserError(f"{base}/train and {base}/test must hold the same class folders; differing: {', '.join(missing)}")
    splits = {}
    for split in ("train", "test"):
        files, labels = list_images(base / split, class_names)
        ids = [str(path.relative_to(base)) for path in files]
        if options.storage == "stream":
            images = FolderImages([str(path) for path in files], options.image_size)
        elif options.storage == "cache":
            images = cached_images(base, split, files, ids, options.image_size, options.cache_dir)
        else:
            images = decode_all(files, options.image_size, f"decoding {base / split}")
        splits[split] = ImageSet(images, torch.as_tensor(labels, dtype=torch.long), ids)
    return SourceData(splits["train"], splits["test"], class_names)


def load_digits(root: str = "", download: bool = False, options: FolderOptions = FolderOptions()) -> SourceData:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, no download), 70/30 per class.

    The train/test division is fixed (seed 0) so every run shares the same test set.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    images = torch.from_numpy(np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    labels = torch.as_tensor(digits.target, dtype=torch.long)
    rng = np.random.default_rng(0)
    train_idx, test_idx = [], []
    for cls in range(10):
        members = rng.permutation(np.flatnonzero(digits.target == cls))
        cut = int(round(0.7 * len(members)))
        train_idx.append(members[:cut])
        test_idx.append(members[cut:])
    full = ImageSet(images, labels, [f"digits/{i}" for i in range(len(labels))])
    return SourceData(full.subset(np.concatenate(train_idx)), full.subset(np.concatenate(test_idx)),
                      [str(d) for d in range(10)])


# Selected by `data.dataset`; each takes (root, download, FolderOptions). Only image folders read
# the storage options: the other sources are small and load from compact files in seconds.
DATASETS: dict[str, Callable[[str, bool, FolderOptions], SourceData]] = {
    "cifar10": lambda root, download, options: load_cifar(root, download, 10),
    "cifar100": lambda root, download, options: load_cifar(root, download, 100),
    "imagefolder": load_image_folder,
    "digits": load_digits,
}


def load_source(name: str, root: str, download: bool, options: FolderOptions = FolderOptions()) -> SourceData:
    """The named source's train pool and test set, resized to options.image_size when that is set."""
    if name not in DATASETS:
        close = difflib.get_close_matches(name, list(DATASETS), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UserError(f"unknown dataset {name!r}{hint}; choose one of: {', '.join(DATASETS)}")
    key = (name, str(Path(root).resolve()) if root else root, options)
    if key not in _DECODED:
        # One source kept per process: a sweep or a benchmark that trains run after run on one dataset
        # decodes (or maps) it once, not once a run. Nothing writes into a SourceData: subsets are copies.
        _DECODED.clear()
        source = DATASETS[name](root, download, options)
        if name != "imagefolder" and options.image_size:  # folders resize each file as it is decoded
            source = SourceData(_resized(source.train, options.image_size), _resized(source.test, options.image_size),
                                source.class_names)
        _DECODED[key] = source
    return _DECODED[key]


def _resized(images: ImageSet, size: int) -> ImageSet:
    """Square images resized to size x size (bilinear, antialiased, as the image folders' decoding)."""
    if images.images.shape[-2:] == (size, size):
        return images
    out = torch.empty((len(images.labels), images.images.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, len(out), 1024):
        chunk = images.images[start:start + 1024].float()
        out[start:start + 1024] = F.interpolate(chunk, size=(size, size), mode="bilinear", antialias=True,
                                                align_corners=False).round_().clamp_(0, 255).to(torch.uint8)
    return ImageSet(out, images.labels, images.sample_ids)


_DECODED: dict[tuple[str, str], SourceData] = {}


def check_source_available(name: str, root: str, download: bool) -> None:
    """Fail early (before any run of a batch trains) when a dataset's files cannot be there."""
    if name == "imagefolder":
        class_folders(Path(root) / "train")
        class_folders(Path(root) / "test")
    elif name in ("cifar10", "cifar100") and not download:
        folder = Path(root) / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
        if not folder.is_dir():
            raise UserError(f"data.root={root!r} has no {folder.name} folder and data.download is false")


__all__ = ["DATASETS", "IMAGE_SUFFIXES", "FolderOptions", "ImageSet", "SourceData", "decode_image",
           "load_source", "quiet_bomb_warnings"]
