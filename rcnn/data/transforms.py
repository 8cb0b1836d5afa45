"""Train and validation transforms on ``(uint8 image [3,H,W], Targets)``.

The resize is the one torchvision's ``GeneralizedRCNNTransform`` applies at test time:
``scale = min(short / min(H, W), max_size / max(H, W))``, bilinear ``interpolate`` on float with
``scale_factor=scale, recompute_scale_factor=True`` (so the new size is ``floor(H * scale)``), no
antialiasing; we round back to uint8. Boxes scale by the per-axis ratio new/old size, polygons
likewise, RLE masks are resized nearest-neighbour (``rcnn.data.masks``). ``TrainTransform`` (these
plus the jitters) lives in ``rcnn.data.augment``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import Tensor
from torch.nn import functional as F

from rcnn.data import masks as mask_ops
from rcnn.structures import Targets


def resize_scale(height: int, width: int, short: int, max_size: int) -> float:
    """The factor bringing the short side to ``short``, the long side to at most ``max_size``."""
    return min(short / min(height, width), max_size / max(height, width))


def resized_size(
    height: int, width: int, short: int, max_size: int, *, rounding: str = "floor"
) -> tuple[int, int]:
    """``(H', W')`` that ``resize`` produces: ``floor(side * scale)`` as ``interpolate`` does, or
    with ``rounding="round"`` the nearest integer (GluonCV's ``resize_short_within``)."""
    scale = resize_scale(height, width, short, max_size)
    if rounding == "round":
        return round(float(height) * scale), round(float(width) * scale)
    if rounding != "floor":
        raise ValueError(f"input.train_rounding must be 'floor' or 'round', got {rounding!r}")
    return math.floor(float(height) * scale), math.floor(float(width) * scale)


def resize_image(
    image: Tensor, short: int, max_size: int, *, rounding: str = "floor"
) -> tuple[Tensor, float]:
    """Resize a uint8 ``[3, H, W]`` image; returns the uint8 ``[3, H', W']`` image and the scale
    (``rounding``: see ``resized_size``)."""
    height, width = image.shape[-2:]
    scale = resize_scale(height, width, short, max_size)
    sizing: dict = {"scale_factor": scale, "recompute_scale_factor": True}
    if rounding != "floor":
        sizing = {"size": resized_size(height, width, short, max_size, rounding=rounding)}
    resized = F.interpolate(
        image[None].float(), mode="bilinear", align_corners=False, antialias=False, **sizing
    )[0]
    return resized.round_().clamp_(0, 255).to(torch.uint8), scale


def resize_targets(targets: Targets, new_size: tuple[int, int], scale: float) -> Targets:
    """Move ``targets`` onto an image resized from ``targets.image_size`` to ``new_size``."""
    old_h, old_w = targets.image_size
    new_h, new_w = new_size
    ratios = torch.tensor([new_w / old_w, new_h / old_h] * 2, dtype=torch.float32)
    masks = targets.masks
    if masks is not None:
        masks = [mask_ops.resize_mask(m, (old_h, old_w), (new_h, new_w)) for m in masks]
    return replace(
        targets,
        boxes=targets.boxes * ratios,
        masks=masks,
        image_size=(new_h, new_w),
        scale=targets.scale * scale,
    )


def resize(
    image: Tensor, targets: Targets, short: int, max_size: int, *, rounding: str = "floor"
) -> tuple[Tensor, Targets]:
    """Resize an image and its targets (short side ``short``, long side at most ``max_size``)."""
    resized, scale = resize_image(image, short, max_size, rounding=rounding)
    return resized, resize_targets(targets, tuple(resized.shape[-2:]), scale)


def hflip_targets(targets: Targets) -> Targets:
    """Mirror targets left-right: ``x -> W - x`` for boxes and polygons; RLE columns reversed."""
    width = targets.image_size[1]
    boxes = targets.boxes.clone()
    boxes[:, 0] = width - targets.boxes[:, 2]
    boxes[:, 2] = width - targets.boxes[:, 0]
    masks = targets.masks
    if masks is not None:
        masks = [mask_ops.flip_mask(m, width) for m in masks]
    return replace(targets, boxes=boxes, masks=masks, flipped=not targets.flipped)


def hflip(image: Tensor, targets: Targets) -> tuple[Tensor, Targets]:
    """Mirror an image ``[3, H, W]`` and its targets left-right."""
    return image.flip(-1), hflip_targets(targets)


class ValTransform:
    """Deterministic resize to ``short`` (the last one when a tuple), keeping ``Targets.scale``."""

    def __init__(self, short: int | Sequence[int], max_size: int) -> None:
        self.short = int(short) if isinstance(short, int) else int(tuple(short)[-1])
        self.max_size = int(max_size)

    def __call__(
        self, image: Tensor, targets: Targets, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Targets]:
        del generator
        return resize(image, targets, self.short, self.max_size)

    def __repr__(self) -> str:
        return f"ValTransform(short={self.short}, max_size={self.max_size})"
