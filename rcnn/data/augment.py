"""Training augmentation beyond resize + flip: colour jitter and large-scale jitter with a crop.

- ``color_jitter``: brightness, contrast and saturation each scaled by a factor drawn from
  ``[1 - s, 1 + s]`` (torchvision's ``adjust_*`` on the uint8 image); geometry untouched.
- ``scale_jitter`` (large-scale jitter, Ghiasi et al. 2021; Detectron2's ``ResizeScale`` +
  ``FixedSizeCrop``): the already resized image is rescaled by a factor drawn from ``[lo, hi]``,
  then, where it grew past its size before the jitter, a window of that size is cut at a random
  place. The output is never larger than without jitter (same compute); smaller factors zoom out.
- ``crop``: boxes shift and are clipped to the window; an instance whose clipped box has no area
  is dropped (with its mask and ignore flag). Polygons shift exactly (pycocotools clips them to the
  image when rasterising); RLE masks are cut on the pixel grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from rcnn.data import masks as mask_ops
from rcnn.data.transforms import hflip, resize
from rcnn.structures import InstanceMask, Targets, is_rle


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def color_jitter(
    image: Tensor, strength: float, generator: torch.Generator | None = None
) -> Tensor:
    """A uint8 ``[3, H, W]`` image with brightness, contrast and saturation jittered by up to
    ``strength`` (factors in ``[1 - strength, 1 + strength]``, drawn in that order)."""
    if strength <= 0:
        return image
    low, high = max(0.0, 1.0 - strength), 1.0 + strength
    image = TF.adjust_brightness(image, _uniform(low, high, generator))
    image = TF.adjust_contrast(image, _uniform(low, high, generator))
    return TF.adjust_saturation(image, _uniform(low, high, generator))


def _crop_mask(mask: InstanceMask, x0: int, y0: int, size: tuple[int, int]) -> InstanceMask:
    height, width = size
    if is_rle(mask):
        bitmap = mask_ops.to_bitmap(mask, *mask["size"])
        return mask_ops.encode_bitmap(bitmap[y0 : y0 + height, x0 : x0 + width])
    moved = []
    for polygon in mask:
        polygon = polygon.copy()
        polygon[0::2] -= x0
        polygon[1::2] -= y0
        moved.append(polygon)
    return moved


def crop(
    image: Tensor, targets: Targets, window: tuple[int, int, int, int]
) -> tuple[Tensor, Targets]:
    """Cut ``window = (x0, y0, width, height)`` (integer pixels inside the image) out of an image
    ``[3, H, W]`` and its targets (see the module docstring)."""
    x0, y0, width, height = window
    cropped = image[:, y0 : y0 + height, x0 : x0 + width]
    boxes = targets.boxes - torch.tensor([x0, y0, x0, y0], dtype=targets.boxes.dtype)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    masks = targets.masks
    if masks is not None:
        masks = [_crop_mask(m, x0, y0, (height, width)) for m, k in zip(masks, keep, strict=True)
                 if k]  # fmt: skip
    return cropped, replace(
        targets,
        boxes=boxes[keep],
        labels=targets.labels[keep],
        ignore=targets.ignore[keep],
        masks=masks,
        image_size=(height, width),
    )


def scale_jitter(
    image: Tensor,
    targets: Targets,
    scale_range: tuple[float, float],
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Targets]:
    """Large-scale jitter of an image already resized to its training size (module docstring)."""
    height, width = image.shape[-2:]
    factor = _uniform(scale_range[0], scale_range[1], generator)
    short = max(1, round(min(height, width) * factor))
    image, targets = resize(image, targets, short, max(1, round(max(height, width) * factor)))
    new_h, new_w = image.shape[-2:]
    out_h, out_w = min(new_h, height), min(new_w, width)
    if (out_h, out_w) == (new_h, new_w):
        return image, targets
    y0 = int(torch.randint(new_h - out_h + 1, (1,), generator=generator))
    x0 = int(torch.randint(new_w - out_w + 1, (1,), generator=generator))
    return crop(image, targets, (x0, y0, out_w, out_h))


class TrainTransform:
    """Random short-side resize (multi-scale), optional large-scale jitter with a random crop,
    random horizontal flip and optional colour jitter, in that order.

    Args:
        short: candidate short sides; ``short_mode="choice"`` picks one per image,
            ``"range"`` draws an integer in ``[short[0], short[-1]]`` (GluonCV's tuple semantics).
        max_size: the long side's limit.
        flip_prob: probability of a horizontal flip.
        color_jitter: brightness/contrast/saturation strength (0: off), see ``color_jitter``.
        scale_jitter: ``(lo, hi)`` factor range of the large-scale jitter (None: off).
        rounding: the resized side: ``"floor"`` of ``side * scale`` or ``"round"`` (GluonCV's
            ``resize_short_within``; ``rcnn.data.transforms.resized_size``).

    With the jitters off, the random draws are those of resize + flip alone (same samples).
    """

    def __init__(
        self,
        short: int | Sequence[int],
        max_size: int,
        *,
        flip_prob: float = 0.5,
        short_mode: str = "choice",
        color_jitter: float = 0.0,
        scale_jitter: Sequence[float] | None = None,
        rounding: str = "floor",
    ) -> None:
        if short_mode not in ("choice", "range"):
            raise ValueError(f"short_mode must be 'choice' or 'range', got {short_mode!r}")
        if rounding not in ("floor", "round"):
            raise ValueError(f"rounding must be 'floor' or 'round', got {rounding!r}")
        self.rounding = rounding
        self.color_jitter = float(color_jitter)
        self.scale_jitter = tuple(float(v) for v in scale_jitter) if scale_jitter else None
        self.short = (int(short),) if isinstance(short, int) else tuple(int(s) for s in short)
        self.max_size = int(max_size)
        self.flip_prob = float(flip_prob)
        self.short_mode = short_mode

    def sample_short(self, generator: torch.Generator | None = None) -> int:
        if self.short_mode == "range":
            low, high = self.short[0], self.short[-1]
            return int(torch.randint(low, high + 1, (1,), generator=generator))
        index = int(torch.randint(len(self.short), (1,), generator=generator))
        return self.short[index]

    def __call__(
        self, image: Tensor, targets: Targets, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Targets]:
        short = self.sample_short(generator)
        image, targets = resize(image, targets, short, self.max_size, rounding=self.rounding)
        if self.scale_jitter is not None:
            image, targets = scale_jitter(image, targets, self.scale_jitter, generator)
        if float(torch.rand((), generator=generator)) < self.flip_prob:
            image, targets = hflip(image, targets)
        if self.color_jitter > 0:
            image = color_jitter(image, self.color_jitter, generator)
        return image, targets

    def __repr__(self) -> str:
        return (
            f"TrainTransform(short={self.short}, max_size={self.max_size}, "
            f"flip_prob={self.flip_prob}, short_mode={self.short_mode!r}, "
            f"color_jitter={self.color_jitter}, scale_jitter={self.scale_jitter})"
        )
