"""User mistakes in the data a run reads: each is one "debiaspl: error:" line naming the file or value,
exit status 2, and nothing written."""

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch

from conftest import run_cli as debiaspl
from debiaspl.config import save_config
from debiaspl.data.datasets import load_image_folder
from debiaspl.engine.run import run_folder, train_run
from debiaspl.errors import UserError


def assert_one_line_error(proc, *fragments):
    """Exit status 2 and a single stderr line that contains every fragment (no traceback, no warning)."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("debiaspl: error: "), proc.stderr
    for fragment in fragments:
        assert str(fragment) in lines[0], (fragment, lines[0])


def png_bytes(height=8, width=8, value=0):
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), value, dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def truncated_png():
    """The first half of a PNG of noise: the header is intact, the pixel data stops short."""
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()[:len(buffer.getvalue()) // 2]


def bomb_png(width=20000, height=10000):
    """A small file whose header declares width x height pixels (2e8 by default: over twice Pillow's limit)."""
    data = bytearray(png_bytes())
    data[16:24] = struct.pack(">II", width, height)                      # IHDR width, height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))      # IHDR CRC over type + data
    return bytes(data)


def image_folder(root, classes=("ant", "bee"), per_class=6):
    """root/train/<class>/*.png and root/test/<class>/*.png of 8x8 RGB images."""
    for split in ("train", "test"):
        for index, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                (folder / f"{i}.png").write_bytes(png_bytes(value=30 * i + index))
    return root


def train_config(tiny, tmp_path, **data):
    """A YAML for `debiaspl train` of the tiny config with these data settings; returns (path, config)."""
    config = tiny(data=data, train={"steps": 2})
    path = tmp_path / "experiment.yaml"
    save_config(config, path)
    return path, config


IMAGEFOLDER = {"dataset": "imagefolder", "num_labeled_head": 2, "labeled_imbalance": 1, "num_unlabeled_head": 3,
               "unlabeled_imbalance": 1, "normalization": "data"}


# 1. one class folder

def test_a_single_class_image_folder_is_refused(tiny, tmp_path):
    root = image_folder(tmp_path / "one", classes=("ant",))
    path, config = train_config(tiny, tmp_path, root=str(root), **IMAGEFOLDER)
    proc = debiaspl("train", path)
    assert_one_line_error(proc, root / "train", "at least two class folders")
    assert not run_folder(config).exists()


# 2. images that cannot or must not be decoded

def test_a_decompression_bomb_in_an_image_folder_is_named(tiny, tmp_path):
    root = image_folder(tmp_path / "data")
    bomb = root / "train" / "bee" / "bomb.png"
    bomb.write_bytes(bomb_png())
    path, config = train_config(tiny, tmp_path, root=str(root), **IMAGEFOLDER)
    proc = debiaspl("train", path)
    assert_one_line_error(proc, bomb, "decompression bomb")
    assert not run_folder(config).exists()


def test_an_image_over_the_pixel_limit_is_refused_not_just_warned_about(tmp_path, monkeypatch):
    # Between MAX_IMAGE_PIXELS and twice it Pillow only warns, then decodes: the limit is checked explicitly,
    # so the refusal holds whatever the warning filters are, and the warning itself is not shown.
    from PIL import Image
    root = image_folder(tmp_path / "data")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40)  # the 8 x 8 = 64-pixel images are over it, not over 80
    for action in ("default", "error", "ignore"):
        with warnings.catch_warnings(record=True) as shown:
            warnings.simplefilter(action)
            with pytest.raises(UserError, match=r"train/ant/0\.png is refused as a possible decompression bomb"):
                load_image_folder(str(root))
        assert not [w for w in shown if issubclass(w.category, Image.DecompressionBombWarning)], action


@pytest.mark.parametrize("content", [b"not an image", truncated_png()], ids=["garbage", "truncated"])
def test_a_corrupt_image_in_an_image_folder_is_named(tiny, tmp_path, content):
    root = image_folder(tmp_path / "data")
    broken = root / "test" / "ant" / "broken.png"
    broken.write_bytes(content)
    path, config = train_config(tiny, tmp_path, root=str(root), **IMAGEFOLDER)
    assert_one_line_error(debiaspl("train", path), "cannot decode image", broken)
    assert not run_folder(config).exists()


@pytest.fixture(scope="module")
def grayscale_run(tmp_path_factory):
    """A two-step digits run (1 x 8 x 8 images) to evaluate against OOD folders."""
    from conftest import tiny_config
    config = tiny_config(tmp_path_factory.mktemp("runs"), train={"steps": 2})
    train_run(config)
    return run_folder(config)


@pytest.mark.parametrize("content", [b"\x89PNG garbage", truncated_png(), bomb_png()],
                         ids=["garbage", "truncated", "bomb"])
def test_an_unreadable_image_in_the_ood_folder_is_named(grayscale_run, tmp_path, content):
    from PIL import Image
    folder = tmp_path / "ood"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8), 50 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    broken = folder / "z.png"
    broken.write_bytes(content)
    proc = debiaspl("eval", grayscale_run, "--ood", f"imagefolder:{folder}")
    assert_one_line_error(proc, broken)
    assert not (grayscale_run / "eval").exists()


# 3. a label file that is not UTF-8

@pytest.mark.parametrize("encoding", ["latin-1", "utf-16", "utf-16-le"])
def test_a_label_file_that_is_not_utf8_is_named(tiny, tmp_path, encoding):
    labels = tmp_path / "labels.csv"
    labels.write_bytes("sample_id,label\ndigits/0,0\ndigits/1,café\n".encode(encoding))
    path, config = train_config(tiny, tmp_path, label_file=str(labels))
    assert_one_line_error(debiaspl("train", path), labels, "UTF-8 CSV")
    assert not run_folder(config).exists()


# 4. debias-logits: logits that are not real numbers, or not finite, and a tau that is not finite

def _logits(tmp_path, array, name="logits.npy"):
    path = tmp_path / name
    np.save(path, array, allow_pickle=True)
    return path


@pytest.mark.parametrize("array", [
    np.ones((20, 3), dtype=np.complex64) * (1 + 2j),
    np.array([["a", "b"], ["c", "d"]]),
    np.array([[1.0, None], [2.0, 3.0]], dtype=object),
    np.ones((20, 3), dtype=bool),
], ids=["complex", "string", "object", "bool"])
def test_debias_logits_refuses_an_array_that_is_not_real(tmp_path, array):
    path = _logits(tmp_path, array)
    assert_one_line_error(debiaspl("debias-logits", path), path)
    assert not path.with_suffix(".debiased.npz").exists()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_debias_logits_refuses_non_finite_logits(tmp_path, bad):
    logits = torch.randn(700, 4, generator=torch.Generator().manual_seed(0)).numpy()
    logits[613, 2] = bad
    path = _logits(tmp_path, logits)
    proc = debiaspl("debias-logits", path, "--batch-size", 16)
    assert_one_line_error(proc, path, "must be finite", "row 613, column 2")
    assert not path.with_suffix(".debiased.npz").exists()


def test_the_finite_check_reads_block_by_block_and_counts_rows_across_blocks(tmp_path, monkeypatch):
    from debiaspl.analysis import debias_logits_run
    logits = np.zeros((700, 4), dtype=np.float32)
    logits[613, 2] = np.nan
    path = _logits(tmp_path, logits)
    monkeypatch.setattr(debias_logits_run, "FINITE_CHECK_BLOCK", 40)  # 10 rows a block (batch size 8 < 10)
    with pytest.raises(UserError, match="row 613, column 2 is nan"):
        debias_logits_run.debias_logits_file(path, tau=0.4, momentum=0.9, batch_size=8)


@pytest.mark.parametrize("tau", ["nan", "inf", "-inf"])
def test_debias_logits_refuses_a_non_finite_tau(tmp_path, tau):
    path = _logits(tmp_path, np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32))
    proc = debiaspl("debias-logits", path, f"--tau={tau}")  # with "=": argparse takes a bare -inf for an option
    assert_one_line_error(proc, f"--tau {float(tau)}", "finite")
    assert not path.with_suffix(".debiased.npz").exists()


def test_debias_logits_still_takes_integer_and_half_logits(tmp_path):
    for dtype in (np.int16, np.float16):
        path = _logits(tmp_path, (np.arange(60).reshape(20, 3) % 5).astype(dtype), f"logits_{dtype.__name__}.npy")
        proc = debiaspl("debias-logits", path)
        assert proc.returncode == 0, proc.stderr
        assert path.with_suffix(".debiased.npz").is_file()


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_eval_refuses_a_noise_std_that_is_not_a_finite_non_negative_number(value):
    from debiaspl.analysis.evaluate_run import evaluate_run

    with pytest.raises(UserError, match=f"--noise-std {float(value)}: must be a finite number >= 0"):
        evaluate_run(None, noise_std=float(value))
