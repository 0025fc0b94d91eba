"""The weak view of FixMatch: a random horizontal flip and a random crop, batched on uint8 [N, C, H, W].

Two crops (``WEAK_CROPS``), both giving images of the input's size:

* ``"pad_crop"``: FixMatch's reflect-pad by round(H / 8) and round(W / 8), then a random H x W crop.
* ``"random_resized_crop"``: torchvision's ``RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3))``
  as ImageNet recipes train: a box of a random area share and aspect ratio (ten tries, then the
  central box of the clamped ratio), resized bilinearly to H x W.

Random parameters come from the caller's CPU ``torch.Generator`` only, so a seed fixes the output
on any device (as in debiaspl.data.augment).
"""

import math

import torch
import torch.nn.functional as F

WEAK_CROPS = ("pad_crop", "random_resized_crop")
RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)
_RRC_TRIES = 10


def weak_augment(images: torch.Tensor, generator: torch.Generator, crop: str = "pad_crop") -> torch.Tensor:
    """Random horizontal flip (p = 0.5) and the random `crop` (one of WEAK_CROPS).

    images: uint8 [N, C, H, W] on any device -> new uint8 [N, C, H, W] on the same device.
    """
    check_inputs(images, generator)
    if crop == "random_resized_crop":
        return random_resized_crop_flip(images, generator)
    if crop != "pad_crop":
        raise ValueError(f"unknown weak crop {crop!r}; expected one of {WEAK_CROPS}")
    n, c, h, w = images.shape
    pad_y, pad_x = round(0.125 * h), round(0.125 * w)
    flips = torch.rand(n, generator=generator) < 0.5
    tops = torch.randint(0, 2 * pad_y + 1, (n, 1), generator=generator)
    lefts = torch.randint(0, 2 * pad_x + 1, (n, 1), generator=generator)
    # Flip, pad and crop are one index map per image, applied by a single gather.
    rows = _reflect(tops + torch.arange(h) - pad_y, h)  # [N, H]
    cols = _reflect(lefts + torch.arange(w) - pad_x, w)  # [N, W]
    cols = torch.where(flips.view(-1, 1), w - 1 - cols, cols).to(images.device)
    index = (rows.to(images.device)[:, :, None] * w + cols[:, None, :]).view(n, 1, h * w)
    return images.reshape(n, c, h * w).gather(2, index.expand(n, c, h * w)).view(n, c, h, w)


def draw_resized_crop_boxes(n: int, h: int, w: int, generator: torch.Generator) -> torch.Tensor:
    """[n, 4] int64 boxes (top, left, height, width) as torchvision's RandomResizedCrop.get_params draws them."""
    area = h * w
    target = area * (RRC_SCALE[0] + (RRC_SCALE[1] - RRC_SCALE[0]) * torch.rand(n, _RRC_TRIES, generator=generator,
                                                                                 dtype=torch.float64))
    log_low, log_high = math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1])
    aspect = torch.exp(log_low + (log_high - log_low) * torch.rand(n, _RRC_TRIES, generator=generator,
                                                                   dtype=torch.float64))
    widths = torch.sqrt(target * aspect).round().long()
    heights = torch.sqrt(target / aspect).round().long()
    fits = (widths > 0) & (widths <= w) & (heights > 0) & (heights <= h)
    first = torch.where(fits.any(1), fits.float().argmax(1), -1)  # the first try that fits, as torchvision
    # the fallback: the whole image, its ratio clamped to RRC_RATIO, centred
    ratio = w / h
    fallback_w, fallback_h = ((w, round(w / RRC_RATIO[0])) if ratio < RRC_RATIO[0] else
                              (round(h * RRC_RATIO[1]), h) if ratio > RRC_RATIO[1] else (w, h))
    rows = torch.arange(n)
    chosen = first.clamp_min(0)
    box_h = torch.where(first >= 0, heights[rows, chosen], fallback_h)
    box_w = torch.where(first >= 0, widths[rows, chosen], fallback_w)
    offsets = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    tops = torch.where(first >= 0, (offsets[:, 0] * (h - box_h + 1)).long(), (h - box_h) // 2)
    lefts = torch.where(first >= 0, (offsets[:, 1] * (w - box_w + 1)).long(), (w - box_w) // 2)
    return torch.stack([tops, lefts, box_h, box_w], dim=1)


def resized_crops(images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Each image's box resized (bilinear) to the image's size, mirrored where `flips`; uint8 in and out.

    Equals cropping then torch.nn.functional.interpolate(mode="bilinear", align_corners=False): the
    sample positions are those of the crop's own pixel grid, clamped to the crop, so no pixel outside
    the box is blended in. A box is never larger than the image, so no antialiasing is needed.
    """
    n, _, h, w = images.shape
    boxes = boxes.double()
    top, left, box_h, box_w = boxes.unbind(1)
    ys = top[:, None] + ((torch.arange(h, dtype=torch.float64) + 0.5) * box_h[:, None] / h - 0.5).clamp_min(0)
    xs = left[:, None] + ((torch.arange(w, dtype=torch.float64) + 0.5) * box_w[:, None] / w - 0.5).clamp_min(0)
    ys = torch.minimum(ys, top[:, None] + box_h[:, None] - 1)
    xs = torch.minimum(xs, left[:, None] + box_w[:, None] - 1)
    xs = torch.where(flips[:, None], xs.flip(1), xs)
    # grid_sample's normalised coordinates with align_corners=False: pixel x sits at (2x + 1) / W - 1
    grid = torch.stack([((2 * xs + 1) / w - 1)[:, None, :].expand(n, h, w),
                        ((2 * ys + 1) / h - 1)[:, :, None].expand(n, h, w)], dim=-1)
    out = F.grid_sample(images.float(), grid.float().to(images.device), mode="bilinear", padding_mode="border",
                        align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def random_resized_crop_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """torchvision's RandomResizedCrop to the images' own size, then RandomHorizontalFlip, per image."""
    n, _, h, w = images.shape
    boxes = draw_resized_crop_boxes(n, h, w, generator)
    flips = torch.rand(n, generator=generator) < 0.5
    return resized_crops(images, boxes, flips)


def check_inputs(images: torch.Tensor, generator: torch.Generator) -> None:
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        got = images.dtype if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a uint8 tensor, got {got}")
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape [N, C, H, W] with C in (1, 3), got {tuple(images.shape)}")
    if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
        raise ValueError(f"generator must be a CPU torch.Generator, got {generator!r}")


def _reflect(positions: torch.Tensor, length: int) -> torch.Tensor:
    """Map padded positions (pad < length) into [0, length) by mirror reflection without edge repeat."""
    positions = positions.abs()
    return torch.where(positions >= length, 2 * (length - 1) - positions, positions)
