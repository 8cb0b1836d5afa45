"""Reading image files into uint8 RGB tensors, with the repairs every real dataset needs.

Repairs (documented, counted by ``rcnn check``): EXIF orientation is applied (an invalid EXIF block
is ignored); grayscale, palette, RGBA/LA, CMYK and 1-bit images are converted to RGB (alpha
dropped); 16-bit and 32-bit integer or float images are scaled to 8 bit (``value / 257``) unless
every value already fits in 0..255; a float image whose values all lie in 0..1 is multiplied by
255 (NaN pixels become 0). A missing file raises ``DatasetError``
naming it; a truncated or undecodable file raises ``UnreadableImageError`` (a ``DatasetError``),
which the dataset turns into a skipped sample.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from rcnn.errors import DatasetError

logger = logging.getLogger(__name__)

EXIF_ORIENTATION = 0x0112


class UnreadableImageError(DatasetError):
    """An image file that exists but cannot be decoded (truncated, corrupt, not an image)."""


@dataclass
class ImageInfo:
    """What reading one image found out (for ``rcnn check``).

    Attributes:
        height: height after EXIF orientation (or of the raw pixels when ``exif_applied`` is False).
        width: width, likewise.
        mode: the Pillow mode on disk (``"RGB"``, ``"L"``, ``"I;16"``, ...).
        exif_orientation: the EXIF orientation tag (1 when absent).
        exif_applied: whether a rotation/flip from EXIF was applied.
        notes: human-readable repairs, e.g. ``"grayscale (L) converted to RGB"``.
    """

    height: int
    width: int
    mode: str
    exif_orientation: int = 1
    exif_applied: bool = False
    notes: list[str] = field(default_factory=list)


def _open(path: str) -> Image.Image:
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: image file not found")
    try:
        image = Image.open(path)
        image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise UnreadableImageError(f"{path}: cannot decode image ({error})") from error
    return image


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(EXIF_ORIENTATION, 1)
        return int(value) if value is not None else 1
    except Exception:
        return 1


def _apply_exif(image: Image.Image, info: ImageInfo, keep_raw: bool) -> Image.Image:
    info.exif_orientation = _orientation(image)
    if keep_raw or info.exif_orientation == 1:
        return image
    if info.exif_orientation not in range(2, 9):
        info.notes.append(f"invalid EXIF orientation {info.exif_orientation} ignored")
        return image
    try:
        rotated = ImageOps.exif_transpose(image)
    except Exception as error:
        info.notes.append(f"unusable EXIF block ignored ({error})")
        return image
    info.exif_applied = True
    info.notes.append(f"EXIF orientation {info.exif_orientation} applied")
    return rotated if rotated is not None else image


def _to_rgb_array(image: Image.Image, info: ImageInfo) -> np.ndarray:
    """Convert any Pillow mode to a uint8 ``[H, W, 3]`` array."""
    mode = image.mode
    if mode.startswith("I") or mode == "F":
        array = np.nan_to_num(np.asarray(image).astype(np.float64), nan=0.0)
        peak = array.max(initial=0)
        if mode == "F" and 0 < peak <= 1.0 and array.min(initial=0) >= 0:
            array = array * 255.0  # float 0..1 (the usual float image range) -> 0..255
            info.notes.append(f"{mode} image with values in 0..1 scaled to 0..255 (8-bit RGB)")
        elif peak > 255:
            array = array / 257.0  # 16-bit range 0..65535 -> 0..255
            info.notes.append(f"{mode} image with values up to {peak:g} divided by 257 (8-bit RGB)")
        else:
            info.notes.append(f"{mode} image converted to 8-bit RGB (values kept)")
        array = np.clip(np.rint(array), 0, 255).astype(np.uint8)
        return np.repeat(array[..., None], 3, axis=2) if array.ndim == 2 else array[..., :3]
    if mode != "RGB":
        if mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")
        info.notes.append(f"{mode} image converted to RGB")
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)


def load_image(path: str, expected_size: tuple[int, int] | None = None) -> tuple[Tensor, ImageInfo]:
    """Read an image as RGB with EXIF orientation applied.

    Args:
        path: the image file.
        expected_size: ``(H, W)`` the annotations were made for. When the EXIF-rotated size does not
            match it but the raw pixels do, the raw pixels are returned (the annotation tool ignored
            EXIF, so the boxes refer to the raw pixels).

    Returns:
        uint8 ``[3, H, W]`` tensor and the ``ImageInfo`` describing the repairs.

    Raises:
        DatasetError: the file does not exist. UnreadableImageError: it cannot be decoded.
    """
    image = _open(path)
    info = ImageInfo(height=image.height, width=image.width, mode=image.mode)
    raw_size = (image.height, image.width)
    oriented = _apply_exif(image, info, keep_raw=False)
    if expected_size is not None and info.exif_applied:
        oriented_size = (oriented.height, oriented.width)
        if oriented_size != tuple(expected_size) and raw_size == tuple(expected_size):
            info.notes[-1] = (
                f"EXIF orientation {info.exif_orientation} not applied: "
                "the annotations match the raw pixels"
            )
            info.exif_applied = False
            oriented = image
    try:
        array = _to_rgb_array(oriented, info)
    except (OSError, ValueError) as error:
        raise UnreadableImageError(f"{path}: cannot convert image ({error})") from error
    info.height, info.width = array.shape[:2]
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))), info


def read_image(path: str, expected_size: tuple[int, int] | None = None) -> Tensor:
    """``load_image`` without the info: uint8 ``[3, H, W]`` RGB tensor."""
    return load_image(path, expected_size)[0]


def image_size(path: str) -> tuple[int, int]:
    """``(H, W)`` of an image after EXIF orientation, read from its header only.

    Raises:
        DatasetError: missing file. UnreadableImageError: not an image.
    """
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: image file not found")
    try:
        with Image.open(path) as image:
            height, width = image.height, image.width
            if _orientation(image) in (5, 6, 7, 8):
                height, width = width, height
    except (OSError, SyntaxError, ValueError) as error:
        raise UnreadableImageError(f"{path}: cannot read image header ({error})") from error
    return height, width


def file_size_if_different(path: str, stated: tuple[int, int]) -> tuple[int, int] | None:
    """The file's ``(H, W)`` (after EXIF orientation) when ``stated`` is neither it nor the raw
    pixels' size; None when it matches, or when the file is missing or unreadable (the image
    checks report those)."""
    if not os.path.isfile(path):
        return None
    try:
        with Image.open(path) as image:
            raw = (image.height, image.width)
            if raw == tuple(stated):  # the common case: no EXIF parsing
                return None
            swapped = _orientation(image) in (5, 6, 7, 8)
    except (OSError, SyntaxError, ValueError):
        return None
    oriented = (raw[1], raw[0]) if swapped else raw
    return None if tuple(stated) == oriented else oriented
