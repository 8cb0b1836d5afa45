"""Instance-mask geometry on polygons and RLE (the ``InstanceMask`` of ``rcnn.structures``).

Polygons are lists of flat float64 arrays ``[x0, y0, x1, y1, ...]`` in continuous pixel
coordinates; RLE is COCO's ``{"size": [H, W], "counts": bytes}``. Polygons move analytically
(exact); RLE is decoded, moved on the pixel grid and re-encoded (exact for flips, nearest-neighbour
for resizes). Rasterisation and areas come from the COCO API (pycocotools).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_util

from rcnn.structures import InstanceMask, is_rle


def clean_polygons(segmentation: list[Any]) -> tuple[list[np.ndarray], int]:
    """Keep the usable polygons of a COCO ``segmentation`` list.

    A polygon is usable when it has an even number (>= 6) of finite coordinates.

    Returns:
        The usable polygons as float64 arrays, and how many were dropped.
    """
    polygons, dropped = [], 0
    for polygon in segmentation:
        try:
            array = np.asarray(polygon, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            dropped += 1
            continue
        if array.size < 6 or array.size % 2 or not np.isfinite(array).all():
            dropped += 1
            continue
        polygons.append(array)
    return polygons, dropped


def rle_from_coco(segmentation: dict[str, Any]) -> dict[str, Any]:
    """Compressed RLE (``counts`` as bytes) from a COCO RLE dict (compressed or not).

    Raises:
        KeyError, TypeError, ValueError: a malformed dict (the reader reports and drops it).
    """
    counts, size = segmentation["counts"], [int(v) for v in segmentation["size"]]
    if len(size) != 2:
        raise ValueError(f"RLE size {size} is not [H, W]")
    if isinstance(counts, list):
        if sum(int(c) for c in counts) != size[0] * size[1]:
            raise ValueError(f"uncompressed RLE counts do not sum to {size[0]}x{size[1]}")
        rle = mask_util.frPyObjects({"size": size, "counts": counts}, *size)
    elif isinstance(counts, (str, bytes)):
        rle = {"size": size, "counts": counts}
    else:
        raise TypeError(f"RLE counts must be a string or a list, not {type(counts).__name__}")
    if isinstance(rle["counts"], str):
        rle["counts"] = rle["counts"].encode("ascii")
    rle = {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"]}
    if isinstance(counts, (str, bytes)):
        mask_util.decode(rle)  # ValueError "Invalid RLE mask representation" for garbage counts
    return rle


def to_rle(mask: InstanceMask, height: int, width: int) -> dict[str, Any]:
    """One compressed RLE for an instance (its polygons merged)."""
    if is_rle(mask):
        return mask
    rles = mask_util.frPyObjects([p.tolist() for p in mask], height, width)
    return mask_util.merge(rles)


def mask_area(mask: InstanceMask, height: int, width: int) -> float:
    """Number of pixels the instance covers (pycocotools ``area``)."""
    return float(mask_util.area(to_rle(mask, height, width)))


def polygon_area(polygons: list[np.ndarray]) -> float:
    """Sum of the polygons' shoelace areas (continuous; close to, not equal to, the pixel count)."""
    total = 0.0
    for polygon in polygons:
        x, y = polygon[0::2], polygon[1::2]
        twice = np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]) + x[-1] * y[0] - x[0] * y[-1]
        total += 0.5 * abs(float(twice))
    return total


def mask_box(mask: InstanceMask, height: int, width: int) -> np.ndarray:
    """float64 ``[4]`` XYXY box around the rasterised instance."""
    x, y, w, h = mask_util.toBbox(to_rle(mask, height, width))
    return np.array([x, y, x + w, y + h], dtype=np.float64)


def to_bitmap(mask: InstanceMask, height: int, width: int) -> np.ndarray:
    """uint8 ``[H, W]`` 0/1 bitmap of the instance."""
    return mask_util.decode(to_rle(mask, height, width))


def encode_bitmap(bitmap: np.ndarray) -> dict[str, Any]:
    """Compressed RLE of a ``[H, W]`` 0/1 bitmap."""
    rle = mask_util.encode(np.asfortranarray(bitmap.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"]}


def flip_mask(mask: InstanceMask, width: int) -> InstanceMask:
    """Mirror an instance left-right in an image ``width`` pixels wide (``x -> width - x``)."""
    if is_rle(mask):
        bitmap = mask_util.decode(mask)
        return encode_bitmap(bitmap[:, ::-1])
    flipped = []
    for polygon in mask:
        polygon = polygon.copy()
        polygon[0::2] = width - polygon[0::2]
        flipped.append(polygon)
    return flipped


def _nearest_indices(old: int, new: int) -> np.ndarray:
    # Pixel centres map onto pixel centres: src = floor((dst + 0.5) * old / new).
    index = np.floor((np.arange(new) + 0.5) * (old / new)).astype(np.int64)
    return np.clip(index, 0, old - 1)


def resize_mask(
    mask: InstanceMask, old_size: tuple[int, int], new_size: tuple[int, int]
) -> InstanceMask:
    """Rescale an instance from an image of ``old_size`` ``(H, W)`` to ``new_size``.

    Polygons scale by ``new / old`` per axis; RLE is resized with nearest-neighbour sampling of
    pixel centres.
    """
    (old_h, old_w), (new_h, new_w) = old_size, new_size
    if is_rle(mask):
        bitmap = mask_util.decode(mask)
        rows, cols = _nearest_indices(old_h, new_h), _nearest_indices(old_w, new_w)
        return encode_bitmap(bitmap[rows][:, cols])
    ratio_x, ratio_y = new_w / old_w, new_h / old_h
    resized = []
    for polygon in mask:
        polygon = polygon.copy()
        polygon[0::2] *= ratio_x
        polygon[1::2] *= ratio_y
        resized.append(polygon)
    return resized


def rle_to_json(rle: dict[str, Any]) -> dict[str, Any]:
    """The RLE dict with ``counts`` as an ASCII string (for json files)."""
    counts = rle["counts"]
    return {
        "size": list(rle["size"]),
        "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
    }
