"""Batched weak/strong augmentation of uint8 images [N, C, H, W] for FixMatch (Sohn et al. 2020).

Weak: horizontal flip + a random crop (debiaspl.data.crops: FixMatch's reflect-pad-and-crop, or a
random resized crop). Strong: weak, then RandAugment (Cubuk et al. 2020),
then Cutout (DeVries & Taylor 2017). Two strong variants (``STRONG_VARIANTS``):

* ``"fixmatch"``: kekmodel/FixMatch-pytorch ``RandAugmentMC(n=2, m=10)``. Each of 2 op slots picks
  one of the 14 ops uniformly per image, an integer level v in 1..9 and applies the op with
  probability 0.5; magnitudes are kekmodel's ``v * max_v / 10 + bias`` (truncated for integer
  ops) with a random sign for rotate/shear/translate. Cutout square of side round(0.5 * size).
* ``"usb"``: USB's ``RandAugment(3, 5)``. 3 slots, each op always applied, magnitude uniform
  (continuous) over the op's range (a signed range [-M, M] is drawn as sign * uniform(0, M),
  the same distribution); Cutout side round(uniform(0, 0.5) * size).

``StrongAugment`` holds the rest, which differs between codebases: the geometric ops' fill (TF
FixMatch's gray 128, PIL's black 0), the Cutout fill and box (``CUTOUT_BOXES``: the paper's square
clipped at the borders, or kekmodel's and USB's PIL ``CutoutAbs``, see ``draw_cutout``).

Ops follow torchvision's tensor kernels (``transforms.v2.functional``) on uint8. Every image gets
its own parameters, drawn on CPU from the caller's ``torch.Generator`` only, so a seed fixes the
output, and the same code runs on CPU or GPU without reading values back from the device (op
subsets are chosen with CPU indices).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from debiaspl.data.crops import WEAK_CROPS, weak_augment

STRONG_VARIANTS = ("fixmatch", "usb")
CUTOUT_BOXES = ("centered", "pil")


@dataclass(frozen=True)
class StrongAugment:
    """The knobs of the strong view: RandAugment variant, fill colours and Cutout geometry."""

    variant: str = "fixmatch"                       # one of STRONG_VARIANTS
    geometric_fill: int = 128                       # rotate / shear / translate fill, all channels
    cutout_fill: tuple[int, ...] = (127, 127, 127)  # per channel (a 1-channel image takes the first)
    cutout_box: str = "centered"                    # one of CUTOUT_BOXES
    weak_crop: str = "pad_crop"                     # one of WEAK_CROPS, also the strong view's first step

    def __post_init__(self):
        if self.variant not in STRONG_VARIANTS:
            raise ValueError(f"unknown strong augmentation variant {self.variant!r}; expected one of "
                             f"{STRONG_VARIANTS}")
        if self.weak_crop not in WEAK_CROPS:
            raise ValueError(f"unknown weak crop {self.weak_crop!r}; expected one of {WEAK_CROPS}")
        if self.cutout_box not in CUTOUT_BOXES:
            raise ValueError(f"unknown Cutout box {self.cutout_box!r}; expected one of {CUTOUT_BOXES}")
        if not all(0 <= v <= 255 for v in (self.geometric_fill, *self.cutout_fill)):
            raise ValueError(f"fill values must be in 0..255, got {self.geometric_fill} and {self.cutout_fill}")


# ---- colour ops: images uint8 [n, C, H, W], magnitudes [n] (float64, same device) -> uint8 [n, C, H, W]


def _blend(images: torch.Tensor, degenerate: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """factor * images + (1 - factor) * degenerate, clamped and truncated to uint8 like torchvision."""
    ratio = factors.view(-1, 1, 1, 1)
    # addcmul is fused like torchvision's add_(alpha=...), so the truncation lands on the same integers.
    out = torch.addcmul(images.float() * ratio.float(), degenerate, (1.0 - ratio).float())
    return out.clamp_(0, 255).to(torch.uint8)


def _grayscale(images: torch.Tensor) -> torch.Tensor:
    """[n, 3, H, W] uint8 -> [n, 1, H, W] float, floored luma with torchvision's weights."""
    r, g, b = images.float().unbind(1)
    return (r * 0.2989 + g * 0.587 + b * 0.114).floor_().unsqueeze(1)


def _identity(images: torch.Tensor, magnitudes: torch.Tensor = None) -> torch.Tensor:
    """The pool's no-op (drawn like any other op, so it lowers the rate of real changes)."""
    return images


def _auto_contrast(images: torch.Tensor, magnitudes: torch.Tensor = None) -> torch.Tensor:
    """Stretch each channel of each image to [0, 255]; constant channels are left unchanged."""
    x = images.float()
    low = x.amin(dim=(2, 3), keepdim=True)
    high = x.amax(dim=(2, 3), keepdim=True)
    flat = high == low
    inv_scale = torch.where(flat, 1.0, (high - low) * (1.0 / 255))
    low = torch.where(flat, 0.0, low)
    return ((x - low) / inv_scale).clamp_(0, 255).to(torch.uint8)


def _brightness(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Blend with black: images * factor."""
    return (images.float() * factors.view(-1, 1, 1, 1).float()).clamp_(0, 255).to(torch.uint8)


def _color(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Blend with the grayscale image (saturation); identity for one channel, as in PIL."""
    if images.shape[1] == 1:
        return images.clone()
    return _blend(images, _grayscale(images), factors)


def _contrast(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Blend with the mean of the grayscale image."""
    gray = _grayscale(images) if images.shape[1] == 3 else images.float()
    return _blend(images, gray.mean(dim=(1, 2, 3), keepdim=True), factors)


def _sharpness(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Blend with the [[1,1,1],[1,5,1],[1,1,1]]/13 smoothed image; the 1-pixel border stays original."""
    c = images.shape[1]
    kernel = torch.full((3, 3), 1.0 / 13.0, device=images.device)
    kernel[1, 1] = 5.0 / 13.0
    x = images.float()
    # torchvision rounds the blurred image before blending; we do the same to match it.
    blurred = F.conv2d(x, kernel.expand(c, 1, 3, 3), groups=c).round_()
    inner = x[:, :, 1:-1, 1:-1]
    alpha = (1.0 - factors.view(-1, 1, 1, 1)).float()
    x[:, :, 1:-1, 1:-1] = torch.addcmul(inner, alpha, blurred - inner)
    return x.clamp_(0, 255).to(torch.uint8)


def _posterize(images: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Keep the top `bits` (integer-valued, 1..8) bits of every pixel."""
    mask = (255 << (8 - bits.long())) & 255
    return images & mask.to(torch.uint8).view(-1, 1, 1, 1)


def _solarize(images: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Invert pixels >= threshold."""
    return torch.where(images >= thresholds.view(-1, 1, 1, 1), 255 - images, images)


def _equalize(images: torch.Tensor, magnitudes: torch.Tensor = None) -> torch.Tensor:
    """Histogram equalisation per image and channel with PIL's lookup table (as torchvision)."""
    n, c, h, w = images.shape
    flat = images.reshape(n * c, h * w).long()
    # All n*c histograms in one scatter_add (bincount would read its max back from a GPU).
    hist = torch.zeros(n * c, 256, dtype=torch.long, device=images.device)
    hist.scatter_add_(1, flat, torch.ones_like(flat))
    # PIL: step = (#pixels not at the top value present) // 255; lut[v] = (cdf(v - 1) + step // 2) // step.
    top_count = hist.gather(1, flat.amax(dim=1, keepdim=True))
    step = (h * w - top_count).div(255, rounding_mode="floor")
    cdf_before = torch.cumsum(hist, dim=1) - hist
    lut = (cdf_before + step // 2).div(step.clamp(min=1), rounding_mode="floor").clamp_(0, 255)
    out = torch.where(step > 0, lut.gather(1, flat), flat)  # step == 0: PIL returns the image
    return out.to(torch.uint8).view(n, c, h, w)


# ---- geometric ops: one affine grid per image, nearest sampling, gray fill


def _affine(images: torch.Tensor, matrix: torch.Tensor, fill: float) -> torch.Tensor:
    """Warp images [n, C, H, W] by matrix [n, 2, 3] (float64) mapping output to input pixel
    coordinates measured from the image centre (pixel centres at half-integers, as torchvision);
    pixels that come from outside the image get `fill`."""
    n, c, h, w = images.shape
    # Pixel units -> affine_grid's [-1, 1] units (align_corners=False: the edges are +-1).
    to_norm = torch.tensor([[1.0, h / w, 2.0 / w], [w / h, 1.0, 2.0 / h]], dtype=matrix.dtype)
    to_norm = to_norm.to(matrix.device)
    grid = F.affine_grid((matrix * to_norm).float(), [n, c, h, w], align_corners=False)
    # Sampling (x - fill) with zero padding makes out-of-image pixels exactly `fill` in one pass.
    shifted = images.float() - fill
    out = F.grid_sample(shifted, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return (out + fill).to(torch.uint8)


def _matrix(*entries) -> torch.Tensor:
    """Stack the six entries a, b, tx, c, d, ty (per-image [n] tensors or floats) into [n, 2, 3]."""
    ref = next(v for v in entries if torch.is_tensor(v))
    columns = [torch.as_tensor(v, dtype=ref.dtype, device=ref.device).expand_as(ref) for v in entries]
    return torch.stack(columns, dim=1).view(-1, 2, 3)


def _rotate(images: torch.Tensor, degrees: torch.Tensor, fill: float = 128.0) -> torch.Tensor:
    """Rotate counter-clockwise about the image centre, like PIL's Image.rotate and TF.rotate."""
    theta = torch.deg2rad(degrees.double())
    cos, sin = torch.cos(theta), torch.sin(theta)
    return _affine(images, _matrix(cos, -sin, 0.0, sin, cos, 0.0), fill)


def _shear_x(images: torch.Tensor, factors: torch.Tensor, fill: float = 128.0) -> torch.Tensor:
    """Output (x, y) reads input (x + s * y, y), y from the top edge: PIL's (1, s, 0, 0, 1, 0)."""
    s = factors.double()
    return _affine(images, _matrix(1.0, s, s * images.shape[2] / 2, 0.0, 1.0, 0.0), fill)


def _shear_y(images: torch.Tensor, factors: torch.Tensor, fill: float = 128.0) -> torch.Tensor:
    """Output (x, y) reads input (x, y + s * x), x from the left edge: PIL's (1, 0, 0, s, 1, 0)."""
    s = factors.double()
    return _affine(images, _matrix(1.0, 0.0, 0.0, s, 1.0, s * images.shape[3] / 2), fill)


def _translate_x(images: torch.Tensor, pixels: torch.Tensor, fill: float = 128.0) -> torch.Tensor:
    """Move the content right by `pixels` (torchvision's translate sign)."""
    return _affine(images, _matrix(1.0, 0.0, -pixels.double(), 0.0, 1.0, 0.0), fill)


def _translate_y(images: torch.Tensor, pixels: torch.Tensor, fill: float = 128.0) -> torch.Tensor:
    """Move the content down by `pixels`."""
    return _affine(images, _matrix(1.0, 0.0, 0.0, 0.0, 1.0, -pixels.double()), fill)


# The 14 ops of kekmodel's fixmatch_augment_pool, in its order.
_POOL = (
    ("auto_contrast", _auto_contrast),
    ("brightness", _brightness),
    ("color", _color),
    ("contrast", _contrast),
    ("equalize", _equalize),
    ("identity", _identity),
    ("posterize", _posterize),
    ("rotate", _rotate),
    ("sharpness", _sharpness),
    ("shear_x", _shear_x),
    ("shear_y", _shear_y),
    ("solarize", _solarize),
    ("translate_x", _translate_x),
    ("translate_y", _translate_y),
)


def _pool_magnitudes(
    name: str, levels: torch.Tensor, signs: torch.Tensor, size: int, fixmatch: bool
) -> torch.Tensor:
    """Per-image magnitudes [n] (float64) in the op's own units from levels [n] in [0, 10].

    FixMatch passes integer levels and truncates like kekmodel's ``_int_parameter`` (the float
    expressions are kept in kekmodel's order so truncation lands on the same integers); USB passes
    levels 10 * uniform(0, 1) and keeps floats except for posterize bits. signs [n] are +-1.
    """
    if name in ("brightness", "color", "contrast", "sharpness"):
        return levels * 0.9 / 10 + 0.05  # factor in [0.05, 0.95]
    if name == "posterize":
        return torch.trunc(levels * 4 / 10) + 4  # bits in 4..7
    if name == "rotate":
        degrees = levels * 30 / 10
        return signs * (degrees.trunc() if fixmatch else degrees)
    if name in ("shear_x", "shear_y"):
        return signs * levels * 0.3 / 10
    if name == "solarize":
        amount = levels * 256 / 10
        return 256 - (amount.trunc() if fixmatch else amount)  # threshold in (0, 256]
    if name in ("translate_x", "translate_y"):
        pixels = signs * levels * 0.3 / 10 * size
        return pixels.trunc() if fixmatch else pixels
    return levels  # ops without a magnitude ignore it


_GEOMETRIC_OPS = frozenset({"rotate", "shear_x", "shear_y", "translate_x", "translate_y"})


@dataclass(frozen=True)
class SlotDraw:
    """One RandAugment op slot's random parameters for n images (CPU tensors [n])."""

    op_ids: torch.Tensor   # int64 index into _POOL
    levels: torch.Tensor   # float64 in [0, 10]: integers 1..9 (fixmatch) or continuous (usb)
    signs: torch.Tensor    # float64 +-1, for the signed ops
    applied: torch.Tensor  # bool: the slot changes this image (p = 0.5 in fixmatch, always in usb)


@dataclass(frozen=True)
class CutoutBoxes:
    """Per-image boxes [n] (int64, CPU) of rows [top, bottom) and columns [left, right), clipped to the image."""

    top: torch.Tensor
    left: torch.Tensor
    bottom: torch.Tensor
    right: torch.Tensor


def draw_rand_augment(n: int, variant: str, generator: torch.Generator) -> list[SlotDraw]:
    """The op slots of RandAugment for n images: 2 for fixmatch (RandAugmentMC(2, 10)), 3 for usb."""
    fixmatch = variant == "fixmatch"
    slots = []
    for _ in range(2 if fixmatch else 3):
        op_ids = torch.randint(len(_POOL), (n,), generator=generator)
        if fixmatch:
            levels = torch.randint(1, 10, (n,), generator=generator).double()
        else:
            levels = 10 * torch.rand(n, generator=generator, dtype=torch.float64)
        signs = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0).double()
        applied = torch.rand(n, generator=generator) < 0.5 if fixmatch else torch.ones(n, dtype=torch.bool)
        slots.append(SlotDraw(op_ids, levels, signs, applied))
    return slots


def _rand_augment(images: torch.Tensor, generator: torch.Generator, fixmatch: bool,
                  geometric_fill: float = 128.0) -> torch.Tensor:
    """RandAugment on uint8 [N, C, H, W] -> [N, C, H, W]. Parameters are drawn on CPU; each op
    type runs once per slot on the subset of images that picked it, so the work is one pass over
    the batch per slot rather than 14."""
    n, _, h, w = images.shape
    device = images.device
    for slot in draw_rand_augment(n, "fixmatch" if fixmatch else "usb", generator):
        out = images.clone()
        for k, (name, op) in enumerate(_POOL):
            idx = torch.nonzero(slot.applied & (slot.op_ids == k)).squeeze(1)
            if name == "identity" or idx.numel() == 0:
                continue
            size = h if name == "translate_y" else w
            magnitudes = _pool_magnitudes(name, slot.levels[idx], slot.signs[idx], size, fixmatch).to(device)
            idx = idx.to(device)
            subset = images.index_select(0, idx)
            changed = op(subset, magnitudes, geometric_fill) if name in _GEOMETRIC_OPS else op(subset, magnitudes)
            out.index_copy_(0, idx, changed)
        images = out
    return images


def draw_cutout(n: int, h: int, w: int, augment: StrongAugment, generator: torch.Generator) -> CutoutBoxes:
    """Cutout boxes for n images of h x w: side 0.5 * size (fixmatch) or uniform(0, 0.5) * size (usb),
    placed as `augment.cutout_box` says (module docstring)."""
    size = min(h, w)
    if augment.cutout_box == "centered":
        if augment.variant == "fixmatch":
            sides = torch.full((n,), round(0.5 * size))
        else:
            sides = torch.round(torch.rand(n, generator=generator, dtype=torch.float64) * 0.5 * size).long()
        top = torch.randint(0, h, (n,), generator=generator) - sides // 2
        left = torch.randint(0, w, (n,), generator=generator) - sides // 2
        return CutoutBoxes(top.clamp(min=0), left.clamp(min=0), (top + sides).clamp(max=h), (left + sides).clamp(max=w))
    # CutoutAbs(img, v): x0 = int(max(0, uniform(0, w) - v / 2)), x1 = int(min(w, x0 + v)), and PIL
    # fills the rectangle [x0, x1] inclusive. kekmodel's v = int(0.5 * 32); USB's v = uniform(0, 0.5) * 32,
    # and USB draws the centre with np.random.uniform(w), i.e. low = w, high = 1: w - (w - 1) * U on (1, w].
    if augment.variant == "fixmatch":
        sides = torch.full((n,), float(int(0.5 * size)), dtype=torch.float64)
    else:
        sides = torch.rand(n, generator=generator, dtype=torch.float64) * 0.5 * size
    units_x = torch.rand(n, generator=generator, dtype=torch.float64)
    units_y = torch.rand(n, generator=generator, dtype=torch.float64)
    if augment.variant == "fixmatch":
        centers_x, centers_y = units_x * w, units_y * h
    else:
        centers_x, centers_y = w - (w - 1) * units_x, h - (h - 1) * units_y
    left = (centers_x - sides / 2).clamp(min=0).floor()
    top = (centers_y - sides / 2).clamp(min=0).floor()
    right = torch.minimum(left + sides, torch.tensor(float(w))).floor() + 1
    bottom = torch.minimum(top + sides, torch.tensor(float(h))).floor() + 1
    return CutoutBoxes(top.long(), left.long(), bottom.long().clamp(max=h), right.long().clamp(max=w))


def _cutout(images: torch.Tensor, boxes: CutoutBoxes, fill: tuple[int, ...] = (127, 127, 127)) -> torch.Tensor:
    """Fill each image's box with `fill` (per channel). Returns a new uint8 tensor [n, C, H, W]."""
    _, c, h, w = images.shape
    device = images.device
    ys, xs = torch.arange(h, device=device), torch.arange(w, device=device)
    rows = (ys >= boxes.top.to(device).view(-1, 1)) & (ys < boxes.bottom.to(device).view(-1, 1))  # [n, H]
    cols = (xs >= boxes.left.to(device).view(-1, 1)) & (xs < boxes.right.to(device).view(-1, 1))  # [n, W]
    colour = torch.tensor(fill[:c] if c == len(fill) else fill[:1] * c, dtype=torch.uint8, device=device)
    inside = rows[:, None, :, None] & cols[:, None, None, :]
    return torch.where(inside, colour.view(1, c, 1, 1), images)


def strong_augment(
    images: torch.Tensor, generator: torch.Generator, augment: StrongAugment | str = "fixmatch"
) -> torch.Tensor:
    """weak_augment, then RandAugment, then Cutout (see the module docstring for the variants).

    augment: a StrongAugment, or a variant name with the other knobs at their defaults.
    images: uint8 [N, C, H, W] on any device -> new uint8 [N, C, H, W] on the same device.
    """
    if isinstance(augment, str):
        augment = StrongAugment(variant=augment)
    images = _rand_augment(weak_augment(images, generator, augment.weak_crop), generator, augment.variant == "fixmatch",
                           float(augment.geometric_fill))
    n, _, h, w = images.shape
    return _cutout(images, draw_cutout(n, h, w, augment, generator), augment.cutout_fill)
