import numpy as np
import pytest
import torch

from debiaspl.config import DataConfig
from debiaspl.data.datasets import load_image_folder
from debiaspl.data.long_tail import long_tail_counts, split_labeled_unlabeled
from debiaspl.data.loaders import make_train_batch, stream_epoch_segments, stream_indices, to_model_input, train_loader
from debiaspl.data.prepare import prepare_data
from debiaspl.errors import UserError

from conftest import SHARED_CIFAR


@pytest.mark.parametrize("head, gamma, expected", [
    (1500, 100, [1500, 899, 539, 323, 193, 116, 69, 41, 25, 15]),
    (3000, 100, [3000, 1798, 1078, 646, 387, 232, 139, 83, 50, 30]),
    (500, 100, [500, 299, 179, 107, 64, 38, 23, 13, 8, 5]),
    (4000, 100, [4000, 2397, 1437, 861, 516, 309, 185, 111, 66, 40]),
])
def test_long_tail_counts_match_the_literature(head, gamma, expected):
    assert long_tail_counts(head, gamma, 10) == expected


def test_totals_and_special_imbalances():
    assert sum(long_tail_counts(1500, 100, 10)) == 3720
    assert sum(long_tail_counts(3000, 100, 10)) == 7443
    assert sum(long_tail_counts(500, 100, 10)) == 1236
    assert sum(long_tail_counts(4000, 100, 10)) == 9922
    assert long_tail_counts(3000, 1, 10) == [3000] * 10
    assert long_tail_counts(3000, -100, 10) == long_tail_counts(3000, 100, 10)[::-1]


def test_split_is_disjoint_seeded_and_exact():
    labels = np.repeat(np.arange(4), 50)
    lb, ulb = split_labeled_unlabeled(labels, [10, 5, 3, 1], [30, 20, 10, 5], seed=3)
    assert not set(lb) & set(ulb)
    assert np.bincount(labels[lb]).tolist() == [10, 5, 3, 1]
    assert np.bincount(labels[ulb]).tolist() == [30, 20, 10, 5]
    lb2, ulb2 = split_labeled_unlabeled(labels, [10, 5, 3, 1], [30, 20, 10, 5], seed=3)
    assert np.array_equal(lb, lb2) and np.array_equal(ulb, ulb2)
    lb3, _ = split_labeled_unlabeled(labels, [10, 5, 3, 1], [30, 20, 10, 5], seed=4)
    assert not np.array_equal(lb, lb3)
    _, rest = split_labeled_unlabeled(labels, [10, 5, 3, 1], None, seed=3)
    assert len(rest) == 200 - 19
    with pytest.raises(ValueError, match="class 0 has 50 images"):
        split_labeled_unlabeled(labels, [40, 5, 3, 1], [30, 20, 10, 5], seed=3)


def test_prepare_digits_and_too_large_requests():
    data = prepare_data(DataConfig(dataset="digits", num_labeled_head=30, labeled_imbalance=10,
                                   num_unlabeled_head=80, unlabeled_imbalance=10))
    assert data.labeled_counts == [30, 23, 17, 13, 10, 8, 6, 5, 3, 3]
    assert data.unlabeled_counts == [80, 61, 47, 37, 28, 22, 17, 13, 10, 8]
    assert data.labeled.images.dtype == torch.uint8 and data.image_shape == (1, 8, 8)
    assert not set(data.labeled.sample_ids) & set(data.unlabeled.sample_ids)
    assert not set(data.test.sample_ids) & set(data.labeled.sample_ids + data.unlabeled.sample_ids)
    with pytest.raises(UserError, match="data.num_labeled_head=100 .*ask for more images"):
        prepare_data(DataConfig(dataset="digits", num_labeled_head=100, num_unlabeled_head=100))


def test_image_folder_errors_name_the_folder(tmp_path):
    with pytest.raises(UserError, match=str(tmp_path / "train")):
        load_image_folder(str(tmp_path))


def test_image_folder_from_written_pngs(tmp_path):
    from PIL import Image

    def write_png(image, path):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
    for split in ("train", "test"):
        for cls in ("ant", "bee"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(3):
                write_png(torch.full((3, 8, 8), 40 * i + (cls == "bee"), dtype=torch.uint8), str(folder / f"{i}.png"))
    source = load_image_folder(str(tmp_path))
    assert source.class_names == ["ant", "bee"]
    assert source.train.images.shape == (6, 3, 8, 8)
    assert source.train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert source.train.images[4, 0, 0, 0].item() == 41
    assert source.test.sample_ids[0] == "test/ant/0.png"
    write_png(torch.zeros((3, 9, 9), dtype=torch.uint8), str(tmp_path / "train" / "ant" / "odd.png"))
    with pytest.raises(UserError, match="odd.png is 9 x 9 pixels but .*0.png is 8 x 8: set data.image_size"):
        load_image_folder(str(tmp_path))


@pytest.mark.skipif(not SHARED_CIFAR.is_dir(), reason="the shared CIFAR-10 JPEG copy is not here")
def test_shared_cifar10_jpeg_long_tail_split():
    data = prepare_data(DataConfig(dataset="imagefolder", root=str(SHARED_CIFAR)))
    assert data.class_names[:3] == ["airplane", "automobile", "bird"]
    assert data.labeled_counts == [1500, 899, 539, 323, 193, 116, 69, 41, 25, 15]
    assert sum(data.unlabeled_counts) == 7443 and len(data.test.labels) == 10000
    assert data.image_shape == (3, 32, 32)


def test_stream_walks_seeded_epoch_permutations():
    # 10 samples, batches of 4: steps 0-2 cover epoch 0 then the start of epoch 1.
    seen = torch.cat([stream_indices(10, 4, step, seed=0, stream=1) for step in range(5)])
    assert sorted(seen[:10].tolist()) == list(range(10))
    assert sorted(seen[10:20].tolist()) == list(range(10))
    assert not torch.equal(seen[:10], seen[10:20])
    assert torch.equal(stream_indices(10, 4, 3, 0, 1), seen[12:16])
    assert not torch.equal(stream_indices(10, 4, 3, 1, 1), seen[12:16])
    # a batch larger than the set spans several epochs
    assert len(stream_indices(3, 8, 0, 0, 1)) == 8
    # stream_epoch_segments names the epoch of each position: every sample once per epoch
    segments = [(step, segment) for step in range(5) for segment in stream_epoch_segments(10, 4, step)]
    assert [segment for _, segment in segments[1:4]] == [(0, 0, 4), (0, 0, 2), (1, 2, 4)]
    for epoch in range(2):
        members = [seen[4 * step + start:4 * step + end] for step, (e, start, end) in segments if e == epoch]
        assert sorted(torch.cat(members).tolist()) == list(range(10))
    assert stream_epoch_segments(3, 8, 0) == [(0, 0, 3), (1, 3, 6), (2, 6, 8)]


def test_batches_are_a_function_of_step_and_workers_keep_order():
    data = prepare_data(DataConfig(dataset="digits", num_labeled_head=20, labeled_imbalance=5,
                                   num_unlabeled_head=40, unlabeled_imbalance=5))
    options = dict(batch_size=4, unlabeled_ratio=2, seed=0, strong="fixmatch")
    direct = [make_train_batch(data.labeled, data.unlabeled, step, **options) for step in range(2, 7)]
    loaded = list(train_loader(data.labeled, data.unlabeled, start_step=2, end_step=7, num_workers=2,
                               pin_memory=False, **options))
    assert [step for step, _ in loaded] == [2, 3, 4, 5, 6]
    for a, (_, b) in zip(direct, loaded):
        for key in vars(a):
            assert torch.equal(getattr(a, key), getattr(b, key)), key
    batch = direct[0]
    assert batch.x_lb.shape == (4, 1, 8, 8) and batch.x_ulb_strong.shape == (8, 1, 8, 8)
    assert torch.equal(batch.y_ulb, data.unlabeled.labels[batch.idx_ulb])


def test_to_model_input_normalizes():
    images = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1)
    out = to_model_input(images, torch.tensor([0.5]), torch.tensor([0.25]))
    assert torch.allclose(out.flatten(), torch.tensor([-2.0, 2.0]))


def test_missing_cifar_without_download_names_the_root(tmp_path):
    from debiaspl.data.datasets import load_source
    with pytest.raises(UserError, match=f"data.root='{tmp_path}'.*--set data.dataset=imagefolder"):
        load_source("cifar10", str(tmp_path), download=False)


def test_load_source_decodes_a_dataset_once_per_process(monkeypatch, tmp_path):
    from debiaspl.data import datasets

    calls = []

    def counting_loader(root, download, options):
        calls.append(root)
        return datasets.load_digits(root, download, options)
    monkeypatch.setitem(datasets.DATASETS, "counted", counting_loader)
    first = datasets.load_source("counted", str(tmp_path), False)
    assert datasets.load_source("counted", str(tmp_path / "." / ""), False) is first   # the same folder, spelt otherwise
    assert len(calls) == 1
    datasets.load_source("counted", str(tmp_path / "other"), False)   # another root: decoded, and replaces the first
    datasets.load_source("counted", str(tmp_path), False)
    assert len(calls) == 3
