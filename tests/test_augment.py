"""Tests for debiaspl.data.augment: the batched ops against torchvision, and the weak/strong pipelines."""

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from debiaspl.data import augment as A
from debiaspl.data.augment import STRONG_VARIANTS, strong_augment, weak_augment

PIPELINES = {
    "weak": weak_augment,
    "fixmatch": lambda x, g: strong_augment(x, g, "fixmatch"),
    "usb": lambda x, g: strong_augment(x, g, "usb"),
}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(n: int, c: int, h: int, w: int | None = None, seed: int = 0) -> torch.Tensor:
    """Random uint8 [n, c, h, w] including the edge cases of autocontrast/equalize: low-contrast,
    constant, and nearly constant images (PIL equalize's step == 0 branch)."""
    w = h if w is None else w
    g = _gen(seed)
    x = torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)
    x[1::4] = x[1::4] // 4 + 60
    x[2::8] = 77
    x[3::8] = 200
    x[3::8, :, :2, :2] = 10
    return x


# ---- pipelines: shapes, purity, determinism


@pytest.mark.parametrize("pipeline", PIPELINES)
@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 32, 32), (3, 8, 8), (1, 8, 8), (3, 12, 8)])
def test_output_keeps_shape_dtype_device_and_input_untouched(pipeline, shape):
    x = _images(16, *shape)
    before = x.clone()
    out = PIPELINES[pipeline](x, _gen(1))
    assert out.shape == x.shape and out.dtype == torch.uint8 and out.device == x.device
    assert torch.equal(x, before)
    assert not torch.equal(out, x)  # 16 images all left identical would mean nothing ran


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_same_seed_same_output_different_seed_different_output(pipeline):
    x = _images(64, 3, 32)
    fn = PIPELINES[pipeline]
    assert torch.equal(fn(x, _gen(5)), fn(x, _gen(5)))
    assert not torch.equal(fn(x, _gen(5)), fn(x, _gen(6)))


def test_invalid_inputs_raise_value_error_naming_the_value():
    x = _images(2, 3, 8)
    with pytest.raises(ValueError, match="randaugment"):
        strong_augment(x, _gen(0), "randaugment")
    with pytest.raises(ValueError, match="float32"):
        weak_augment(x.float(), _gen(0))
    with pytest.raises(ValueError, match="float32"):
        strong_augment(x.float(), _gen(0))
    with pytest.raises(ValueError, match=r"\(3, 8, 8\)"):
        weak_augment(x[0], _gen(0))
    with pytest.raises(ValueError, match=r"\(2, 4, 8, 8\)"):
        strong_augment(torch.zeros(2, 4, 8, 8, dtype=torch.uint8), _gen(0))


# ---- single ops against torchvision's tensor kernels, image by image with the same magnitude



def _factors(g: torch.Generator, n: int) -> torch.Tensor:
    return 0.05 + 0.9 * torch.rand(n, generator=g, dtype=torch.float64)


_COLOUR_OPS = {
    # name: (batched op, per-image torchvision reference, magnitude sampler, max abs difference)
    "auto_contrast": (A._auto_contrast, lambda im, m: TF.autocontrast(im), _factors, 0),
    "equalize": (A._equalize, lambda im, m: TF.equalize(im), _factors, 0),
    "brightness": (A._brightness, TF.adjust_brightness, _factors, 0),
    "posterize": (A._posterize, lambda im, m: TF.posterize(im, int(m)),
                  lambda g, n: torch.randint(1, 9, (n,), generator=g).double(), 0),
    "solarize": (A._solarize, TF.solarize, lambda g, n: torch.randint(0, 256, (n,), generator=g).double(), 0),
    # Blend ops: float32 rounding of the blend depends on how the kernel vectorises (fused
    # multiply-add or not), which differs between a batch and a single image, so a value sitting
    # on an integer boundary can truncate one level apart.
    "color": (A._color, TF.adjust_saturation, _factors, 1),
    "contrast": (A._contrast, TF.adjust_contrast, _factors, 1),
    "sharpness": (A._sharpness, TF.adjust_sharpness, _factors, 1),
}


@pytest.mark.parametrize("name", _COLOUR_OPS)
@pytest.mark.parametrize("c,size", [(3, 32), (1, 32), (3, 8), (1, 8)])
def test_colour_op_matches_torchvision(name, c, size):
    op, reference, sample, tolerance = _COLOUR_OPS[name]
    x = _images(32, c, size, seed=size + c)
    magnitudes = sample(_gen(3), 32)
    out = op(x.clone(), magnitudes)
    expected = torch.stack([reference(im, float(m)) for im, m in zip(x, magnitudes)])
    diff = (out.int() - expected.int()).abs()
    assert diff.max() <= tolerance
    assert (diff > 0).float().mean() < 0.01  # off-by-one is a rare boundary case, not a bias


def _affine_reference(name: str):
    """torchvision with NEAREST and fill 128; shear about the top-left corner like PIL/kekmodel."""
    kwargs = dict(interpolation=InterpolationMode.NEAREST, fill=128)
    if name == "rotate":
        return lambda im, m: TF.rotate(im, m, **kwargs)
    if name.startswith("shear"):
        def shear(im, m):
            degrees = math.degrees(math.atan(m))
            angles = [degrees, 0.0] if name == "shear_x" else [0.0, degrees]
            return TF.affine(im, angle=0.0, translate=[0, 0], scale=1.0, shear=angles, center=[0, 0],
                             **kwargs)
        return shear
    shift = (lambda m: [int(m), 0]) if name == "translate_x" else (lambda m: [0, int(m)])
    return lambda im, m: TF.affine(im, angle=0.0, translate=shift(m), scale=1.0, shear=[0.0, 0.0], **kwargs)


_GEOMETRY = {
    "rotate": (A._rotate, lambda g, n: 60 * torch.rand(n, generator=g, dtype=torch.float64) - 30),
    "shear_x": (A._shear_x, lambda g, n: 0.03 * torch.randint(-9, 10, (n,), generator=g).double()),
    "shear_y": (A._shear_y, lambda g, n: 0.03 * torch.randint(-9, 10, (n,), generator=g).double()),
    "translate_x": (A._translate_x, lambda g, n: torch.randint(-9, 10, (n,), generator=g).double()),
    "translate_y": (A._translate_y, lambda g, n: torch.randint(-9, 10, (n,), generator=g).double()),
}


@pytest.mark.parametrize("name", _GEOMETRY)
@pytest.mark.parametrize("c,h,w", [(3, 32, 32), (1, 8, 8), (3, 10, 16)])
def test_geometric_op_matches_torchvision_affine(name, c, h, w):
    op, sample = _GEOMETRY[name]
    x = _images(32, c, h, w, seed=h + w)
    magnitudes = sample(_gen(4), 32)
    out = op(x.clone(), magnitudes)
    expected = torch.stack([_affine_reference(name)(im, float(m)) for im, m in zip(x, magnitudes)])
    differs = (out != expected).any(dim=1).float().mean()
    if name.startswith("translate"):
        assert differs == 0  # integer shifts land on pixel centres: no rounding ties
    else:
        # We build the sampling grid with affine_grid, torchvision with its own float32 formula;
        # source points exactly halfway between two pixels (e.g. shear 0.12 on row 12) round
        # either way, so a few pixels may take a neighbour's value.
        assert differs < 0.005


# ---- RandAugment magnitudes and application rate


def _kekmodel_magnitude(name, v, sign, size):
    """kekmodel's fixmatch_augment_pool parameters, transcribed with Python numbers."""
    float_param = float(v) * 0.3 / 10  # the shear and translate ops' max_v is 0.3
    if name in ("brightness", "color", "contrast", "sharpness"):
        return float(v) * 0.9 / 10 + 0.05
    if name == "posterize":
        return int(v * 4 / 10) + 4
    if name == "rotate":
        return sign * int(v * 30 / 10)
    if name in ("shear_x", "shear_y"):
        return sign * float_param
    if name == "solarize":
        return 256 - int(v * 256 / 10)
    if name in ("translate_x", "translate_y"):
        return int(sign * float_param * size)
    return None


@pytest.mark.parametrize("size", [32, 8])
def test_fixmatch_magnitudes_match_kekmodel(size):
    levels = torch.arange(1, 10).double().repeat(2)
    signs = torch.tensor([1.0] * 9 + [-1.0] * 9, dtype=torch.float64)
    for name, _ in A._POOL:
        got = A._pool_magnitudes(name, levels, signs, size, fixmatch=True)
        expected = [_kekmodel_magnitude(name, int(v), s, size) for v, s in zip(levels, signs.tolist())]
        if expected[0] is not None:
            assert got.tolist() == pytest.approx(expected, abs=1e-12), name


def test_usb_magnitudes_cover_the_op_ranges():
    levels = 10 * torch.rand(4000, generator=_gen(0), dtype=torch.float64)
    signs = torch.where(torch.rand(4000, generator=_gen(1)) < 0.5, -1.0, 1.0).double()
    ranges = {"brightness": (0.05, 0.95), "posterize": (4, 7), "rotate": (-30, 30), "shear_x": (-0.3, 0.3),
              "solarize": (0, 256), "translate_y": (-0.3 * 32, 0.3 * 32)}
    for name, (low, high) in ranges.items():
        got = A._pool_magnitudes(name, levels, signs, 32, fixmatch=False)
        span = high - low
        assert low <= got.min() < low + 0.01 * span and high - 0.01 * span < got.max() <= high, name
    degrees = A._pool_magnitudes("rotate", levels, signs, 32, fixmatch=False)
    assert not torch.equal(degrees, degrees.round())  # continuous, not integer levels


@pytest.mark.parametrize("variant", STRONG_VARIANTS)
def test_randaugment_draws_every_op_and_both_signs(variant, monkeypatch):
    drawn = {}

    def recording_magnitudes(name, levels, signs, size, fixmatch):
        magnitudes = original(name, levels, signs, size, fixmatch)
        drawn.setdefault(name, []).append(magnitudes)
        return magnitudes

    original = A._pool_magnitudes
    monkeypatch.setattr(A, "_pool_magnitudes", recording_magnitudes)
    strong_augment(_images(1000, 3, 32), _gen(0), variant)
    assert set(drawn) == {name for name, _ in A._POOL} - {"identity"}
    for name in ("rotate", "shear_x", "shear_y", "translate_x", "translate_y"):
        magnitudes = torch.cat(drawn[name])
        assert (magnitudes < 0).any() and (magnitudes > 0).any(), name


def test_randaugment_applies_ops_at_the_variant_rate():
    # fixmatch: an op slot changes an image with p ~= 0.5 * 13/14, so ~29% of images pass both
    # slots unchanged; usb always applies 3 ops, so only identity x3 (or no-op magnitudes) survives.
    x = _images(2000, 3, 32)
    x[1::4] = x[1::4] // 4 + 60  # keep autocontrast from being a no-op on full-range noise
    unchanged = {v: (A._rand_augment(x, _gen(0), v == "fixmatch") == x).flatten(1).all(1).float().mean()
                 for v in STRONG_VARIANTS}
    assert 0.22 < unchanged["fixmatch"] < 0.37
    assert unchanged["usb"] < 0.02


# ---- weak augmentation, by brute force over all crops


def _all_crops(image: torch.Tensor, pad: int) -> torch.Tensor:
    """[C, H, W] -> every H x W crop [(2 pad + 1)^2, C, H, W] of the reflect-padded image."""
    c, h, w = image.shape
    padded = F.pad(image.float()[None], (pad, pad, pad, pad), mode="reflect")[0]
    return padded.unfold(1, h, 1).unfold(2, w, 1).permute(1, 2, 0, 3, 4).reshape(-1, c, h, w)


@pytest.mark.parametrize("c,size,pad", [(3, 8, 1), (1, 32, 4)])
def test_weak_augment_is_a_padded_crop_of_the_image_or_its_flip(c, size, pad):
    x = torch.randint(0, 256, (48, c, size, size), generator=_gen(0), dtype=torch.uint8)
    out = weak_augment(x, _gen(1))
    flipped, offsets = 0, set()
    for image, result in zip(x, out):
        plain = (_all_crops(image, pad) == result.float()).flatten(1).all(1)
        mirrored = (_all_crops(image.flip(-1), pad) == result.float()).flatten(1).all(1)
        assert plain.any() or mirrored.any()
        flipped += int(mirrored.any())
        offsets.add(int(torch.nonzero(plain | mirrored)[0]))
    assert 8 < flipped < 40  # p = 0.5 over 48 images
    assert len(offsets) > 3  # crops really move


# ---- Cutout


def _centered_boxes(centers_y, centers_x, sides):
    """The paper's boxes as the "centered" mode draws them, from given centres and sides."""
    top, left = torch.tensor(centers_y) - torch.tensor(sides) // 2, torch.tensor(centers_x) - torch.tensor(sides) // 2
    return A.CutoutBoxes(top.clamp(min=0), left.clamp(min=0), (top + torch.tensor(sides)).clamp(max=32),
                         (left + torch.tensor(sides)).clamp(max=32))


def test_cutout_fills_a_clipped_gray_square():
    x = torch.zeros(3, 3, 32, 32, dtype=torch.uint8)
    out = A._cutout(x, _centered_boxes([10, 0, 31], [20, 0, 5], [16, 16, 6]))
    expected = torch.zeros(3, 32, 32, dtype=torch.bool)
    expected[0, 2:18, 12:28] = True  # centred, full 16 x 16
    expected[1, :8, :8] = True  # centre in the corner: only the in-image quarter
    expected[2, 28:, 2:8] = True  # side 6 at the bottom edge
    assert torch.equal(out == 127, expected[:, None].expand(3, 3, 32, 32))
    assert torch.equal(out[out != 127], x[out != 127])


def test_cutout_fills_each_channel_with_its_own_value():
    x = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    boxes = A.CutoutBoxes(*(torch.tensor(v) for v in ([0, 4], [0, 4], [4, 8], [4, 8])))
    out = A._cutout(x, boxes, (125, 123, 114))
    assert out[0, :, :4, :4].flatten(1).unique(dim=1).tolist() == [[125], [123], [114]]
    assert (out[0, :, 4:, :] == 0).all() and (out[1, :, 4:, 4:].flatten(1).unique(dim=1) == torch.tensor([[125], [123], [114]])).all()
    gray = A._cutout(torch.zeros(1, 1, 8, 8, dtype=torch.uint8), A.CutoutBoxes(*(torch.tensor([v]) for v in (0, 0, 8, 8))),
                     (125, 123, 114))
    assert (gray == 125).all()  # one channel takes the first value


def _cutout_abs_reference(w, h, v, cx, cy):
    """kekmodel / USB CutoutAbs transcribed: the set of (row, col) PIL's inclusive rectangle fills."""
    x0, y0 = int(max(0, cx - v / 2.0)), int(max(0, cy - v / 2.0))
    x1, y1 = int(min(w, x0 + v)), int(min(h, y0 + v))
    return {(r, c) for r in range(y0, min(y1, h - 1) + 1) for c in range(x0, min(x1, w - 1) + 1)}


@pytest.mark.parametrize("variant", STRONG_VARIANTS)
def test_pil_cutout_boxes_match_cutout_abs(variant):
    augment = A.StrongAugment(variant=variant, cutout_box="pil")
    n = 400
    boxes = A.draw_cutout(n, 32, 32, augment, _gen(3))
    # Replay the draws: sides (usb only), then centre x, then centre y, as numpy would turn the same
    # uniforms into np.random.uniform(0, w) (kekmodel) or np.random.uniform(w) = uniform(low=w, high=1) (USB).
    g = _gen(3)
    sides = [16.0] * n if variant == "fixmatch" else (torch.rand(n, generator=g, dtype=torch.float64) * 16).tolist()
    units = torch.rand(n, generator=g, dtype=torch.float64), torch.rand(n, generator=g, dtype=torch.float64)
    low, high = (0.0, 32.0) if variant == "fixmatch" else (32.0, 1.0)
    cx, cy = ((low + (high - low) * u).tolist() for u in units)  # numpy's uniform(low, high)
    for i in range(n):
        got = {(r, c) for r in range(boxes.top[i], boxes.bottom[i]) for c in range(boxes.left[i], boxes.right[i])}
        assert got == _cutout_abs_reference(32, 32, sides[i], cx[i], cy[i]), i
    heights = boxes.bottom - boxes.top
    if variant == "fixmatch":  # 17 x 17 (inclusive) unless the box reaches the bottom/right edge
        assert heights.max() == 17 and (heights == 17).float().mean() > 0.6
    else:
        assert heights.min() == 1 and heights.max() == 16  # int(y0 + v) - y0 + 1 with v < 16


@pytest.mark.parametrize("variant", STRONG_VARIANTS)
def test_strong_augment_ends_with_cutout_of_the_variant_side(variant, monkeypatch):
    calls = []

    def recording_cutout(images, boxes, fill):
        calls.append((images.clone(), boxes))
        return original(images, boxes, fill)

    original = A._cutout
    monkeypatch.setattr(A, "_cutout", recording_cutout)
    x = _images(200, 3, 32)
    out = strong_augment(x, _gen(2), variant)
    before_cutout, boxes = calls[0]
    heights, widths = boxes.bottom - boxes.top, boxes.right - boxes.left
    for start in (boxes.top, boxes.left):  # boxes placed over the whole image
        assert start.min() == 0 and start.max() >= 20 and len(set(start.tolist())) > 16
    inside = heights[(boxes.top > 0) & (boxes.bottom < 32)]  # boxes not clipped vertically
    if variant == "fixmatch":
        assert (inside == 16).all()
    else:  # round(uniform(0, 0.5) * 32)
        assert inside.min() <= 1 and inside.max() >= 15 and heights.max() <= 16
    gray = (out == 127).all(dim=1)
    changed = (out != before_cutout).any(dim=1)
    assert not (changed & ~gray).any()  # Cutout only ever writes gray
    assert torch.equal(gray.flatten(1).sum(1) >= heights * widths, torch.ones(200, dtype=torch.bool))


def test_strong_augment_knobs_set_the_fills():
    x = torch.full((64, 3, 32, 32), 200, dtype=torch.uint8)
    augment = A.StrongAugment(variant="fixmatch", geometric_fill=0, cutout_fill=(125, 123, 114), cutout_box="pil")
    out = strong_augment(x, _gen(4), augment)
    colours = {tuple(p) for p in out.permute(0, 2, 3, 1).reshape(-1, 3).tolist()}
    assert (125, 123, 114) in colours and (0, 0, 0) in colours  # Cutout and a geometric op's border
    assert (127, 127, 127) not in colours and (128, 128, 128) not in colours
    with pytest.raises(ValueError, match="square"):
        A.StrongAugment(cutout_box="square")


def test_randaugment_draws_the_variant_slots():
    fixmatch = A.draw_rand_augment(4000, "fixmatch", _gen(0))
    usb = A.draw_rand_augment(4000, "usb", _gen(0))
    assert len(fixmatch) == 2 and len(usb) == 3  # RandAugmentMC(2, 10) vs RandAugment(3, 5)
    for slot in fixmatch:
        assert set(slot.levels.tolist()) == set(range(1, 10))  # randint(1, 10): integer levels 1..9
        assert 0.47 < slot.applied.float().mean() < 0.53
        assert set(slot.op_ids.tolist()) == set(range(14))
    for slot in usb:
        assert slot.applied.all() and 0 <= slot.levels.min() < 0.05 and 9.95 < slot.levels.max() < 10
        assert not torch.equal(slot.levels, slot.levels.round())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_matches_cpu_for_the_same_seed():
    x = _images(64, 3, 32)
    for fn in PIPELINES.values():
        cpu, gpu = fn(x, _gen(9)), fn(x.cuda(), _gen(9)).cpu()
        # Same parameters; only float rounding at sampling ties / blend boundaries may differ.
        assert (cpu != gpu).float().mean() < 0.001
