"""Image sources decoded once into memory as uint8 tensors: CIFAR-10/100, ImageFolder trees, digits.

Each loader returns the full train pool and the test set; the long-tailed split is drawn from the
train pool in debiaspl.data.prepare, so every source gets the same treatment.
"""

from __future__ import annotations

import difflib
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from debiaspl.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


@dataclass(frozen=True)
class ImageSet:
    images: torch.Tensor      # [N, C, H, W] uint8
    labels: torch.Tensor      # [N] int64
    sample_ids: list[str]     # [N] stable ids: the file path for image folders, "<split>/<index>" otherwise

    def subset(self, indices: np.ndarray) -> "ImageSet":
        index = torch.as_tensor(indices, dtype=torch.long)
        return ImageSet(self.images[index], self.labels[index], [self.sample_ids[i] for i in indices])


@dataclass(frozen=True)
class SourceData:
    train: ImageSet
    test: ImageSet
    class_names: list[str]


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


def load_image_folder(root: str, download: bool = False) -> SourceData:
    """`<root>/train/<class>/*` and `<root>/test/<class>/*`, all images of one size, decoded as RGB."""
    base = Path(root)
    class_names = _class_folders(base / "train")
    test_classes = _class_folders(base / "test")
    if test_classes != class_names:
        missing = sorted(set(class_names) ^ set(test_classes))
        raise UserError(f"{base}/train and {base}/test must hold the same class folders; differing: {', '.join(missing)}")
    return SourceData(_decode_split(base / "train", class_names, base),
                      _decode_split(base / "test", class_names, base), class_names)


def load_digits(root: str = "", download: bool = False) -> SourceData:
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


# Selected by `data.dataset`; each takes (root, download).
DATASETS: dict[str, Callable[[str, bool], SourceData]] = {
    "cifar10": lambda root, download: load_cifar(root, download, 10),
    "cifar100": lambda root, download: load_cifar(root, download, 100),
    "imagefolder": load_image_folder,
    "digits": load_digits,
}


def load_source(name: str, root: str, download: bool) -> SourceData:
    if name not in DATASETS:
        close = difflib.get_close_matches(name, list(DATASETS), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UserError(f"unknown dataset {name!r}{hint}; choose one of: {', '.join(DATASETS)}")
    key = (name, str(Path(root).resolve()) if root else root)
    if key not in _DECODED:
        # One source kept per process: a sweep or a benchmark that trains run after run on one dataset
        # decodes its 60,000 JPEGs once (about a minute on 2 cores), not once a run. Nothing writes into
        # a SourceData: subsets are copies.
        _DECODED.clear()
        _DECODED[key] = DATASETS[name](root, download)
    return _DECODED[key]


_DECODED: dict[tuple[str, str], SourceData] = {}


def check_source_available(name: str, root: str, download: bool) -> None:
    """Fail early (before any run of a batch trains) when a dataset's files cannot be there."""
    if name == "imagefolder":
        _class_folders(Path(root) / "train")
        _class_folders(Path(root) / "test")
    elif name in ("cifar10", "cifar100") and not download:
        folder = Path(root) / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
        if not folder.is_dir():
            raise UserError(f"data.root={root!r} has no {folder.name} folder and data.download is false")


def _class_folders(folder: Path) -> list[str]:
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


def _decode_split(folder: Path, class_names: list[str], base: Path) -> ImageSet:
    files, labels = [], []
    for index, name in enumerate(class_names):
        members = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        files += members
        labels += [index] * len(members)
    if not files:
        raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")

    def decode(path: Path) -> torch.Tensor:
        return torch.from_numpy(decode_image(path, "RGB")).permute(2, 0, 1)

    # Pillow's decoders release the GIL, so threads give a real speed-up here.
    with quiet_bomb_warnings(), ThreadPoolExecutor(max_workers=4) as pool:
        images = list(pool.map(decode, files, chunksize=256))
    shape = images[0].shape
    for path, image in zip(files, images):
        if image.shape != shape:
            raise UserError(f"{path} is {tuple(image.shape[1:])} pixels but {files[0]} is {tuple(shape[1:])}: "
                            f"resize the folder's images to one size first")
    ids = [str(p.relative_to(base)) for p in files]
    return ImageSet(torch.stack(images).contiguous(), torch.as_tensor(labels, dtype=torch.long), ids)


# What Pillow raises for a file it cannot read or that is corrupt: UnidentifiedImageError and "image file
# is truncated" are OSErrors; broken headers and tiles surface as SyntaxError, ValueError or EOFError.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError)


def decode_image(path: Path, mode: str) -> np.ndarray:
    """One image file as a uint8 array in Pillow `mode` ("RGB": [H, W, 3], "L": [H, W]).

    A file that cannot be decoded, or whose header declares more than Image.MAX_IMAGE_PIXELS pixels,
    is a UserError naming it. Pillow itself raises only above twice that limit and merely warns
    between the two, then decodes the whole image; the header check below refuses both before a
    pixel is decoded, whatever the warning filters say.
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            limit = Image.MAX_IMAGE_PIXELS
            if limit is not None and image.width * image.height > limit:
                raise UserError(f"image {path} is refused as a possible decompression bomb: it declares "
                                f"{image.width} x {image.height} = {image.width * image.height} pixels, over "
                                f"PIL.Image.MAX_IMAGE_PIXELS = {limit}; remove it or shrink it")
            return np.array(image.convert(mode))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # the latter under -W error
        raise UserError(f"image {path} is refused as a possible decompression bomb: {exc}; remove it or shrink it") from None
    except _DECODE_ERRORS as exc:
        raise UserError(f"cannot decode image {path} ({type(exc).__name__}: {exc}); replace or remove it") from None


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
