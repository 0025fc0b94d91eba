"""Image folders of mixed sizes: image_size, the decoded cache, the streaming path, statistics, crops."""

import errno
import os

import numpy as np
import pytest
import torch

from debiaspl.config import DataConfig
from debiaspl.data import image_folder
from debiaspl.data.crops import draw_resized_crop_boxes, resized_crops, weak_augment
from debiaspl.data.datasets import FolderOptions, load_image_folder
from debiaspl.data.prepare import channel_stats, prepare_data
from debiaspl.errors import UserError
from tests.conftest import tiny_config


def _write_folder(root, sizes=((20, 12), (9, 15), (16, 16), (31, 8)), per_class=4, classes=("ant", "bee", "cat")):
    """A tree of PNGs and JPEGs of the given (width, height) sizes, RGB and gray, with per-image content."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                width, height = sizes[(i + c) % len(sizes)]
                pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
                pixels[..., 0] = 60 * c + 10 * i  # a class-dependent channel the model can learn
                image = Image.fromarray(pixels)
                if i % 3 == 2:
                    image.convert("L").save(folder / f"{i}.png")
                else:
                    image.save(folder / f"{i}.{'jpg' if i % 2 else 'png'}", quality=95)
    return root


def test_mixed_sizes_need_image_size_then_every_storage_gives_the_same_pixels(tmp_path):
    root = _write_folder(tmp_path / "photos")
    with pytest.raises(UserError, match="set data.image_size"):
        load_image_folder(str(root), options=FolderOptions(storage="memory"))
    loaded = {storage: load_image_folder(str(root), options=FolderOptions(12, storage, str(tmp_path / "cache")))
              for storage in ("memory", "cache", "stream")}
    memory = loaded["memory"]
    assert memory.train.images.shape == (12, 3, 12, 12) and memory.test.images.shape == (12, 3, 12, 12)
    for storage in ("cache", "stream"):
        other = loaded[storage]
        assert other.train.sample_ids == memory.train.sample_ids
        assert torch.equal(other.train.labels, memory.train.labels)
        assert torch.equal(other.train.images[torch.arange(12)], memory.train.images)
        assert torch.equal(other.test.images[0:12], memory.test.images)
        assert torch.equal(other.train.images[5], memory.train.images[5])
    stream_subset = loaded["stream"].train.subset(np.array([7, 2]))
    assert torch.equal(stream_subset.images[0:2], memory.train.images[[7, 2]])


def test_decoding_resizes_the_shorter_side_and_center_crops(tmp_path):
    from PIL import Image

    pixels = np.zeros((10, 30, 3), dtype=np.uint8)   # 30 wide, 10 high: a red left third, green middle, blue right
    pixels[:, :10, 0] = pixels[:, 10:20, 1] = pixels[:, 20:, 2] = 255
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    square = image_folder.decode_image(tmp_path / "wide.png", "RGB", 10)
    assert square.shape == (10, 10, 3)
    assert (square[..., 1] == 255).all() and (square[..., [0, 2]] == 0).all()   # only the middle third is kept


def test_the_second_load_maps_the_cache_without_decoding(tmp_path, monkeypatch):
    root, cache = _write_folder(tmp_path / "photos"), tmp_path / "cache"
    first = load_image_folder(str(root), options=FolderOptions(12, "cache", str(cache)))
    files = sorted(p.name for p in cache.iterdir())
    assert len(files) == 2 and all(name.endswith(".npy") for name in files)  # train and test, nothing partial

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the cache is valid")
    monkeypatch.setattr(image_folder, "decode_image", no_decoding)
    second = load_image_folder(str(root), options=FolderOptions(12, "cache", str(cache)))
    assert torch.equal(second.train.images[0:12], first.train.images[0:12])
    second.train.images.mapped[0].fill_(7)   # copy-on-write: the file keeps its pixels
    monkeypatch.undo()
    third = load_image_folder(str(root), options=FolderOptions(12, "cache", str(cache)))
    assert torch.equal(third.train.images[0:12], first.train.images[0:12]) and not (third.train.images[0] == 7).all()
    subset = third.train.subset(np.array([3, 1]))
    assert type(subset.images).__name__ == "MappedImages" and torch.equal(subset.images[0:2], first.train.images[[3, 1]])


def test_a_changed_file_invalidates_the_cache_and_the_stale_one_is_removed(tmp_path):
    root, cache = _write_folder(tmp_path / "photos"), tmp_path / "cache"
    load_image_folder(str(root), options=FolderOptions(12, "cache", str(cache)))
    before = {p.name for p in cache.iterdir()}
    victim = root / "train" / "bee" / "0.png"
    from PIL import Image
    Image.fromarray(np.full((12, 12, 3), 200, dtype=np.uint8)).save(victim)
    os.utime(victim, ns=(1, 1))  # another mtime even on a coarse file system
    after = load_image_folder(str(root), options=FolderOptions(12, "cache", str(cache)))
    names = {p.name for p in cache.iterdir()}
    assert len(names) == 2 and names != before
    changed = after.train.sample_ids.index("train/bee/0.png")
    assert (after.train.images[changed] == 200).all()
    # another size is another cache, kept beside this one
    load_image_folder(str(root), options=FolderOptions(8, "cache", str(cache)))
    assert len(list(cache.iterdir())) == 4


def test_a_decode_that_fails_midway_leaves_no_cache_file(tmp_path, monkeypatch):
    root, cache = _write_folder(tmp_path / "photos"), tmp_path / "cache"
    calls = []
    real = image_folder.decode_image

    def failing(path, mode, size=0):
        calls.append(path)
        if len(calls) == 5:
            raise KeyboardInterrupt  # as a kill or Ctrl-C mid-decode
        return real(path, mode, size)
    monkeypatch.setattr(image_folder, "decode_image", failing)
    with pytest.raises(KeyboardInterrupt):
        load_image_folder(str(root), options=FolderOptions(12, "cache", str(cache)))
    assert list(cache.iterdir()) == []
    monkeypatch.undo()
    assert load_image_folder(str(root), options=FolderOptions(12, "cache", str(cache))).train.images.shape[0] == 12


def test_an_abandoned_partial_file_of_a_dead_process_is_removed(tmp_path):
    root, cache = _write_folder(tmp_path / "photos"), tmp_path / "cache"
    cache.mkdir()
    import socket
    from debiaspl.data.decoded_cache import cache_prefix
    dead = cache / f"{cache_prefix(root, 'train', 12)}-{'0' * 32}.partial-{socket.gethostname()}-999999999.npy"
    dead.write_bytes(b"half")
    load_image_folder(str(root), options=FolderOptions(12, "cache", str(cache)))
    assert not dead.exists()


@pytest.mark.skipif(os.name != "posix", reason="flock")
def test_a_temporary_whose_builder_holds_its_lock_is_left_even_if_its_pid_looks_dead(tmp_path):
    # a builder in another PID namespace (a container sharing the cache folder): its pid is not ours to see
    import fcntl
    import socket

    from debiaspl.data.decoded_cache import cache_prefix
    root, cache = _write_folder(tmp_path / "photos"), tmp_path / "cache"
    cache.mkdir()
    elsewhere = cache / f"{cache_prefix(root, 'train', 12)}-{'1' * 32}.partial-{socket.gethostname()}-999999999.npy"
    with open(elsewhere, "wb") as builder:
        fcntl.flock(builder, fcntl.LOCK_EX)
        load_image_folder(str(root), options=FolderOptions(12, "cache", str(cache)))
        assert elsewhere.exists()
    load_image_folder(str(root), options=FolderOptions(12, "cache", str(cache)))  # a valid cache: nothing built
    assert elsewhere.exists()
    load_image_folder(str(root), options=FolderOptions(11, "cache", str(cache)))  # a build of another S: not its prefix
    assert elsewhere.exists()
    next(p for p in cache.glob("*-train-12-*.npy") if ".partial-" not in p.name).unlink()  # so it builds again
    load_image_folder(str(root), options=FolderOptions(12, "cache", str(cache)))
    assert not elsewhere.exists()  # its lock is gone: abandoned


def test_folders_of_the_same_name_keep_their_own_caches(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    roots = [_write_folder(tmp_path / "a" / "photos"), _write_folder(tmp_path / "b" / "photos", per_class=5)]
    for root in roots:
        load_image_folder(str(root), options=FolderOptions(12, "cache", str(cache)))
    assert len(list(cache.iterdir())) == 4  # train and test of each, none removed as the other's stale file

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although its cache is there")
    monkeypatch.setattr(image_folder, "decode_image", no_decoding)
    for root, per_class in zip(roots, (4, 5)):
        assert load_image_folder(str(root), options=FolderOptions(12, "cache", str(cache))).train.images.shape[0] == 3 * per_class


def test_a_full_disk_is_found_before_the_decode_not_by_a_write_through_the_map(tmp_path, monkeypatch):
    from debiaspl.data import decoded_cache
    root, cache = _write_folder(tmp_path / "photos"), tmp_path / "cache"
    reserved = []
    real_decode = decoded_cache.decode_into

    def decode_checking_blocks(out, files, size, description, after_chunk=None):
        partial = next(cache.glob("*.partial-*.npy"))
        reserved.append(partial.stat().st_blocks * 512 >= partial.stat().st_size)
        return real_decode(out, files, size, description, after_chunk)
    monkeypatch.setattr(decoded_cache, "decode_into", decode_checking_blocks)
    load_image_folder(str(root), options=FolderOptions(12, "cache", str(cache)))
    assert reserved == [True, True]  # every block on the disk before the first pixel

    def no_room(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(decoded_cache.os, "posix_fallocate", no_room)
    with pytest.raises(UserError, match=r"cannot write the decoded cache .*No space left on device.*needs 0 MiB free"):
        load_image_folder(str(root), options=FolderOptions(10, "cache", str(cache)))
    assert not list(cache.glob("*.partial-*"))


FULL_DISK_BUILD = """
import sys
from debiaspl.data.datasets import FolderOptions, load_image_folder
from debiaspl.errors import UserError
try:
    load_image_folder(sys.argv[1], options=FolderOptions(128, "cache", sys.argv[2]))
except UserError as exc:
    print(exc)
"""


def test_a_cache_larger_than_the_free_space_is_one_line_not_a_bus_error(tmp_path):
    # a real full disk: a 900 KiB tmpfs in a private mount namespace (root and unshare needed)
    import shutil
    import subprocess
    import sys
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1) to mount a small tmpfs")
    root = _write_folder(tmp_path / "photos", sizes=((128, 128),), per_class=7)  # train: 21 x 48 KiB
    small = tmp_path / "small"
    small.mkdir()
    script = (f"mount -t tmpfs -o size=900k tmpfs {small} || exit 77; "
              f"{sys.executable} -c '{FULL_DISK_BUILD}' {root} {small}/cache; echo exit $?; ls {small}/cache")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True)
    if proc.returncode == 77 or "unshare failed" in proc.stderr:
        pytest.skip(f"no private tmpfs here: {proc.stderr.strip()[:200]}")
    out = proc.stdout.splitlines()
    assert out[:2] and "No space left on device" in out[0] and "data.cache_dir" in out[0] and out[1] == "exit 0", proc
    assert out[2:] == [], out  # no temporary left in the full folder


def test_an_unwritable_cache_folder_is_one_line_naming_it(tmp_path):
    root = _write_folder(tmp_path / "photos")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    with pytest.raises(UserError, match=f"cannot write the decoded cache {blocker}.*data.cache_dir.*data.storage: memory"):
        load_image_folder(str(root), options=FolderOptions(12, "cache", str(blocker)))


def test_a_damaged_cache_file_is_refused_with_its_name(tmp_path):
    root, cache = _write_folder(tmp_path / "photos"), tmp_path / "cache"
    load_image_folder(str(root), options=FolderOptions(12, "cache", str(cache)))
    victim = next(p for p in cache.iterdir() if "-train-" in p.name)
    victim.write_bytes(victim.read_bytes()[:200])
    with pytest.raises(UserError, match=f"{victim}.*delete it and run again"):
        load_image_folder(str(root), options=FolderOptions(12, "cache", str(cache)))


def test_stream_needs_an_image_size(tmp_path):
    root = _write_folder(tmp_path / "photos", sizes=((12, 12),))
    with pytest.raises(UserError, match="data.storage = stream .* set data.image_size"):
        load_image_folder(str(root), options=FolderOptions(0, "stream"))


def test_channel_stats_are_exact_in_chunks_and_sample_a_streamed_set(tmp_path):
    images = torch.randint(0, 256, (50, 3, 9, 7), dtype=torch.uint8)
    mean, std = channel_stats([images[:20], images[20:]], pixels_per_chunk=500)
    pixels = images.transpose(0, 1).reshape(3, -1).double() / 255
    assert np.allclose(mean, pixels.mean(1).tolist(), rtol=0, atol=1e-12)
    assert np.allclose(std, pixels.std(1).tolist(), rtol=0, atol=1e-12)
    root = _write_folder(tmp_path / "photos")
    config = dict(dataset="imagefolder", root=str(root), image_size=12, num_labeled_head=2, labeled_imbalance=1,
                  num_unlabeled_head=2, unlabeled_imbalance=1, cache_dir=str(tmp_path / "cache"))
    cached, streamed = prepare_data(DataConfig(**config)), prepare_data(DataConfig(**config, storage="stream"))
    assert cached.mean == streamed.mean and cached.std == streamed.std  # below the sample size: every image
    assert not streamed.labeled.in_memory and cached.labeled.in_memory


def test_random_resized_crop_equals_cropping_then_interpolating():
    images = torch.randint(0, 256, (40, 3, 20, 28), dtype=torch.uint8)
    boxes = draw_resized_crop_boxes(40, 20, 28, torch.Generator().manual_seed(3))
    assert ((boxes[:, 2] >= 1) & (boxes[:, 0] + boxes[:, 2] <= 20) & (boxes[:, 3] >= 1)
            & (boxes[:, 1] + boxes[:, 3] <= 28)).all()
    flips = torch.arange(40) % 2 == 0
    out = resized_crops(images, boxes, flips)
    for i, (top, left, height, width) in enumerate(boxes.tolist()):
        reference = torch.nn.functional.interpolate(images[i:i + 1, :, top:top + height, left:left + width].float(),
                                                    size=(20, 28), mode="bilinear", align_corners=False)
        reference = reference.round().clamp(0, 255).to(torch.uint8)[0]
        reference = reference.flip(-1) if flips[i] else reference
        assert (reference.int() - out[i].int()).abs().max() <= 1  # float32 grid positions
    assert weak_augment(images, torch.Generator().manual_seed(0), "random_resized_crop").shape == images.shape


def test_random_resized_crop_boxes_follow_torchvision_distribution():
    from torchvision.transforms import RandomResizedCrop

    ours = draw_resized_crop_boxes(20000, 32, 32, torch.Generator().manual_seed(1)).double()
    torch.manual_seed(0)
    theirs = torch.tensor([RandomResizedCrop.get_params(torch.zeros(3, 32, 32), (0.08, 1.0), (3 / 4, 4 / 3))
                           for _ in range(20000)]).double()
    area_ours, area_theirs = (ours[:, 2] * ours[:, 3]).mean(), (theirs[:, 2] * theirs[:, 3]).mean()
    assert abs(area_ours - area_theirs) / area_theirs < 0.03
    assert (ours.mean(0) - theirs.mean(0)).abs().max() < 0.3


def test_a_mixed_size_folder_trains_evaluates_and_records_how_it_was_held(tmp_path):
    import json

    from debiaspl.engine.run import train_run

    root = _write_folder(tmp_path / "photos", per_class=6)
    data = {"dataset": "imagefolder", "root": str(root), "image_size": 16, "num_labeled_head": 3,
            "labeled_imbalance": 1, "num_unlabeled_head": 3, "unlabeled_imbalance": 1,
            "cache_dir": str(tmp_path / "cache"), "weak_crop": "random_resized_crop"}
    results = {}
    for storage in ("cache", "stream"):
        config = tiny_config(tmp_path / "runs", data={**data, "storage": storage}, logging={"run_name": storage})
        results[storage] = train_run(config)
        info = json.loads((tmp_path / "runs" / storage / "run_info.json").read_text())
        assert info["image_shape"] == [3, 16, 16]
        assert info["storage"] == storage
    assert results["cache"]["top1"] == results["stream"]["top1"]  # the same pixels, the same run


def test_mapped_and_streamed_images_index_like_a_tensor(tmp_path):
    from debiaspl.data.image_set import MappedImages

    tensor = torch.arange(5 * 3 * 4 * 4).view(5, 3, 4, 4)
    mapped = MappedImages(tensor, torch.tensor([4, 0, 2]))
    reference = tensor[[4, 0, 2]]
    for key in (1, -1, slice(0, 2), torch.tensor([2, 0]), np.array([1]), (1, 0, 2), (slice(0, 3), 1), (torch.tensor([2]), 0, 1, 3)):
        assert torch.equal(mapped[key], reference[key]), key
    assert mapped.shape == (3, 3, 4, 4) and len(mapped.select(np.array([0, 2]))) == 2
    root = _write_folder(tmp_path / "photos", sizes=((6, 6),))
    streamed = load_image_folder(str(root), options=FolderOptions(6, "stream")).train.images
    in_memory = load_image_folder(str(root), options=FolderOptions(6, "memory")).train.images
    for key in (3, slice(2, 5), torch.tensor([4, 1]), (2, 1), (slice(0, 2), 0, 3)):
        assert torch.equal(streamed[key], in_memory[key]), key


def _mapped_rss_kib(path) -> int:
    """Resident kB of this process's maps of `path` (/proc/self/smaps)."""
    total, inside = 0, False
    for line in open("/proc/self/smaps"):
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5:  # a mapping's header line: range perms offset dev inode [path]
            inside = len(fields) >= 6 and fields[-1] == str(path)
        elif inside and fields[0] == "Rss:":
            total += int(fields[1])
    return total


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux's /proc/self/smaps")
def test_mapped_images_hand_their_pages_back_after_each_read(tmp_path):
    """A pass over all rows keeps the map's resident pages to about one read's, and pickles by path."""
    import pickle

    from debiaspl.data.image_set import MappedImages

    pixels = np.random.default_rng(0).integers(0, 256, (1024, 3, 32, 32), dtype=np.uint8)  # 3 MiB
    path = tmp_path / "cache.npy"
    np.save(path, pixels)
    images = MappedImages.open(path).select(np.arange(1023, -1, -1))
    for start in range(0, 1024, 64):
        assert torch.equal(images[start:start + 64], torch.from_numpy(pixels[::-1][start:start + 64].copy()))
    assert torch.equal(images[5], torch.from_numpy(pixels[1018]))
    assert _mapped_rss_kib(path) <= 256  # one read is 192 KiB
    kept = MappedImages(images.mapped, images.index)  # the same map without handing pages back
    for start in range(0, 1024, 64):
        kept[start:start + 64]
    assert _mapped_rss_kib(path) >= 3000
    again = pickle.loads(pickle.dumps(images))  # what a forkserver/spawn loader worker receives
    assert again.pages is not images.pages and torch.equal(again[[0, 9]], images[[0, 9]])


def test_channel_statistics_of_a_cached_split_are_remembered(tmp_path):
    from debiaspl.data import decoded_cache

    root, cache = _write_folder(tmp_path / "photos"), tmp_path / "cache"
    train = load_image_folder(str(root), options=FolderOptions(12, "cache", str(cache))).train
    sets, calls = [train.subset(np.array([0, 3, 5])), train.subset(np.array([7, 1]))], []

    def measure(image_sets):
        calls.append(len(image_sets))
        return channel_stats(image_sets)

    first = decoded_cache.remembered_channel_stats([s.images for s in sets], measure)
    again = decoded_cache.remembered_channel_stats([s.images for s in sets], measure)
    assert first == again == channel_stats([s.images for s in sets]) and calls == [2]  # measured once
    other = decoded_cache.remembered_channel_stats([train.subset(np.array([2])).images], measure)
    assert calls == [2, 1] and other == channel_stats([train.subset(np.array([2])).images])  # other rows, measured
    memo = next(cache.glob("*.stats.json"))
    memo.write_text("{not json")  # a damaged memo is measured and written anew
    assert decoded_cache.remembered_channel_stats([s.images for s in sets], measure) == first and calls == [2, 1, 2]
    in_memory = load_image_folder(str(root), options=FolderOptions(12, "memory")).train
    decoded_cache.remembered_channel_stats([in_memory.images], measure)
    assert calls == [2, 1, 2, 1]  # not rows of a cache: measured every time


def test_only_images_large_enough_to_gain_are_decoded_on_threads_and_both_keep_the_order(tmp_path, monkeypatch):
    from PIL import Image

    rng = np.random.default_rng(0)
    def jpegs(side, count):
        paths = [tmp_path / f"{side}_{i}.jpg" for i in range(count)]
        for path in paths:
            Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path, quality=90)
        return paths
    small, large = jpegs(32, 3), jpegs(128, 5)
    monkeypatch.setattr(image_folder, "usable_cores", lambda: 2)
    assert image_folder.decoding_map(small) is map  # threads only fight over the GIL for 32 px
    assert image_folder.decoding_map(large) == image_folder._thread_pool().map
    assert image_folder.decoding_map(large[:1]) is map
    out = np.empty((len(large), 3, 128, 128), np.uint8)
    image_folder.decode_into(out, large, 0, "large")  # on the threads, rows in the files' order
    for row, path in zip(out, large):
        assert np.array_equal(row, image_folder.decode_image(path, "RGB").transpose(2, 0, 1))
    monkeypatch.setattr(image_folder, "usable_cores", lambda: 1)
    assert image_folder.decoding_map(large) is map  # one core: no threads at all
    # a streamed folder decides once, on its first batch, and its subsets keep the answer
    asked = []
    monkeypatch.setattr(image_folder, "threads_pay_off", lambda path: asked.append(path) or True)
    streamed = image_folder.FolderImages([str(path) for path in large], 128)
    first, again = streamed[[0, 1]], streamed.select(np.array([4, 3]))[[0, 1]]
    assert len(asked) == 1 and torch.equal(again[0], torch.from_numpy(out[4])) and torch.equal(first[1], torch.from_numpy(out[1]))


def test_usable_cores_without_an_affinity_call(monkeypatch):
    monkeypatch.delattr(image_folder.os, "sched_getaffinity")  # macOS and Windows have none
    assert image_folder.usable_cores() == (os.cpu_count() or 1)


def test_sixteen_bit_gray_is_scaled_to_eight_bits_and_float_pixels_are_refused(tmp_path):
    from PIL import Image

    ramp = np.arange(0, 65536, 4369, dtype=np.uint16).reshape(2, 8)  # 0 .. 65535 in 16 steps
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    decoded = image_folder.decode_image(tmp_path / "deep.png", "RGB")
    assert decoded[..., 0].tolist() == (ramp.astype(np.int64) * 255 // 65535).tolist()  # not clipped to white
    assert (decoded[..., 0] == decoded[..., 2]).all() and decoded[0, 0, 0] == 0 and decoded[1, 7, 0] == 255
    Image.fromarray(np.ones((4, 4), np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(UserError, match=r"float\.tif has floating-point pixels"):
        image_folder.decode_image(tmp_path / "float.tif", "RGB")


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads Linux's /proc/self/maps")
def test_a_failed_build_does_not_keep_its_deleted_file_mapped_while_the_error_lives(tmp_path):
    from PIL import Image
    root, cache = _write_folder(tmp_path / "photos", sizes=((16, 16),)), tmp_path / "cache"
    Image.fromarray(np.zeros((9, 16, 3), np.uint8)).save(root / "train" / "cat" / "3.png")  # another size
    with pytest.raises(UserError, match="is 16 x 9 pixels") as info:
        load_image_folder(str(root), options=FolderOptions(0, "cache", str(cache)))
    assert info.value.__traceback__ is not None  # kept, as a notebook keeps its last error
    with open("/proc/self/maps") as maps:
        assert [line for line in maps if str(cache) in line] == []  # no map of the (deleted) temporary


def test_a_cache_still_mapped_is_not_removed_as_stale_until_its_images_are_gone(tmp_path):
    import gc

    from PIL import Image
    root, cache = _write_folder(tmp_path / "photos"), tmp_path / "cache"
    victim = root / "train" / "bee" / "0.png"

    def change(mtime):
        Image.fromarray(np.full((12, 12, 3), mtime, dtype=np.uint8)).save(victim)
        os.utime(victim, ns=(mtime, mtime))
        return load_image_folder(str(root), options=FolderOptions(12, "cache", str(cache)))

    def train_caches():
        return sorted(p.name for p in cache.glob("*-train-*.npy"))
    first = load_image_folder(str(root), options=FolderOptions(12, "cache", str(cache)))
    version_a = train_caches()
    second = change(1)  # another job's view: `first` still maps version A, a spawned worker would reopen it
    assert len(train_caches()) == 2 and set(version_a) < set(train_caches())
    version_b = sorted(set(train_caches()) - set(version_a))
    del first
    gc.collect()
    third = change(2)  # A is free now and goes; B is still mapped by `second`
    assert set(version_b) < set(train_caches()) and not set(version_a) & set(train_caches())
    assert len(train_caches()) == 2 and (third.train.images[third.train.sample_ids.index("train/bee/0.png")] == 2).all()
    assert second.train.images.shape == third.train.images.shape
