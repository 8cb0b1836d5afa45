"""Pictures of images with boxes and masks.

``plot_bbox`` and ``plot_mask`` keep GluonCV's signatures (``gluoncv.utils.viz``);
``draw_instances`` draws ``Detections`` or ``Targets`` onto a PIL image (boxes, class names,
scores, translucent masks). Matplotlib is used through its Agg canvas only (no pyplot, no
global backend switch).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image, ImageDraw, ImageFont

from rcnn.ops.masks import instance_bitmap
from rcnn.structures import Detections, Targets

# 20 distinguishable colours (matplotlib's tab20), 0-255 RGB; class/instance i uses PALETTE[i % 20].
PALETTE = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
]  # fmt: skip


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _hwc_image(img: Any) -> np.ndarray:
    """uint8 ``[H, W, 3]`` from a ``[3, H, W]`` tensor or an ``[H, W, 3]`` array."""
    array = _to_numpy(img)
    if array.ndim == 3 and array.shape[0] == 3 and array.shape[-1] != 3:
        array = array.transpose(1, 2, 0)
    if array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(array)


def plot_image(img: Any, ax: Axes | None = None, reverse_rgb: bool = False) -> Axes:
    """Show an image on ``ax`` (a new Agg figure when None); ``reverse_rgb`` swaps BGR/RGB."""
    if ax is None:
        figure = Figure()
        FigureCanvasAgg(figure)
        ax = figure.add_subplot(1, 1, 1)
    array = _hwc_image(img)
    ax.imshow(array[:, :, ::-1] if reverse_rgb else array)
    return ax


def plot_bbox(
    img: Any,
    bboxes: Any,
    scores: Any = None,
    labels: Any = None,
    thresh: float = 0.5,
    class_names: Sequence[str] | None = None,
    colors: dict[int, Any] | None = None,
    ax: Axes | None = None,
    reverse_rgb: bool = False,
    absolute_coordinates: bool = True,
    linewidth: float = 3.5,
    fontsize: int = 12,
) -> Axes:
    """Draw boxes ``[N, 4]`` (XYXY) with class names and scores, as GluonCV's ``plot_bbox``.

    Boxes with ``labels < 0`` (GluonCV's padding) or ``scores < thresh`` are skipped. With
    ``absolute_coordinates=False`` the boxes are fractions of the image size. ``colors`` maps a
    class id to a matplotlib colour (default: the class's palette colour).

    Returns:
        The matplotlib axes drawn on.
    """
    ax = plot_image(img, ax=ax, reverse_rgb=reverse_rgb)
    boxes = _to_numpy(bboxes).reshape(-1, 4).astype(np.float64)
    if len(boxes) == 0:
        return ax
    if not absolute_coordinates:
        height, width = _hwc_image(img).shape[:2]
        boxes = boxes * np.array([width, height, width, height])
    label_array = None if labels is None else _to_numpy(labels).reshape(-1)
    score_array = None if scores is None else _to_numpy(scores).reshape(-1)
    for index, (x1, y1, x2, y2) in enumerate(boxes):
        class_id = int(label_array[index]) if label_array is not None else -1
        if (label_array is not None and class_id < 0) or (
            score_array is not None and score_array[index] < thresh
        ):
            continue
        colour = (colors or {}).get(
            class_id, tuple(c / 255 for c in PALETTE[max(class_id, 0) % 20])
        )
        ax.add_patch(
            Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=linewidth)
        )
        text = _caption(class_id, None if score_array is None else score_array[index], class_names)
        if text:
            ax.text(x1, y1 - 2, text, fontsize=fontsize, color="white",
                    bbox={"facecolor": colour, "alpha": 0.5})  # fmt: skip
    return ax


def _caption(class_id: int, score: float | None, class_names: Sequence[str] | None) -> str:
    name = ""
    if class_id >= 0:
        name = (
            class_names[class_id] if class_names and class_id < len(class_names) else str(class_id)
        )
    if score is not None:
        return f"{name} {float(score):.3f}".strip()
    return name


def plot_mask(img: Any, masks: Any, alpha: float = 0.5) -> np.ndarray:
    """Blend full-image masks ``[N, H, W]`` onto an image, one palette colour per instance.

    Returns:
        uint8 ``[H, W, 3]``: ``(1 - alpha) * image + alpha * colour`` inside each mask.
    """
    canvas = _hwc_image(img).astype(np.float64)
    for index, mask in enumerate(_to_numpy(masks)):
        inside = mask.astype(bool)
        colour = np.array(PALETTE[index % 20], dtype=np.float64)
        canvas[inside] = (1 - alpha) * canvas[inside] + alpha * colour
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def _instances(instances: Detections | Targets, size: tuple[int, int], score_thresh: float):
    """``(boxes [N,4], labels [N], scores [N] or None, bool masks [N,H,W] or None, ignore [N])``."""
    boxes, labels = _to_numpy(instances.boxes), _to_numpy(instances.labels)
    if isinstance(instances, Detections):
        scores = _to_numpy(instances.scores)
        keep = scores >= score_thresh
        masks = None if instances.masks is None else _to_numpy(instances.masks)[keep].astype(bool)
        return boxes[keep], labels[keep], scores[keep], masks, np.zeros(int(keep.sum()), bool)
    masks = None
    if instances.masks is not None:
        masks = [instance_bitmap(m, *size).astype(bool) for m in instances.masks]
        masks = np.stack(masks) if masks else np.zeros((0, *size), dtype=bool)
    return boxes, labels, None, masks, _to_numpy(instances.ignore).astype(bool)


def draw_instances(
    image: Any,
    detections_or_targets: Detections | Targets,
    class_names: Sequence[str],
    *,
    score_thresh: float = 0.5,
) -> Image.Image:
    """Draw instances on an image: translucent masks (alpha 0.5), boxes, names and scores.

    Args:
        image: uint8 ``[3, H, W]`` tensor (or ``[H, W, 3]`` array).
        detections_or_targets: ``Detections`` (bool masks ``[N, H, W]``, filtered by
            ``score_thresh``) or ``Targets`` (polygon/RLE masks; ignore regions drawn dashed-grey
            and captioned "ignore").
        class_names: label -> name.

    Returns:
        An RGB ``PIL.Image`` of the image's size.
    """
    array = _hwc_image(image)
    size = array.shape[:2]
    boxes, labels, scores, masks, ignore = _instances(detections_or_targets, size, score_thresh)
    if masks is not None and len(masks):
        array = plot_mask(array, masks)
    picture = Image.fromarray(array)
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default()
    for index, box in enumerate(boxes):
        colour = (160, 160, 160) if ignore[index] else PALETTE[index % 20]
        draw.rectangle([float(v) for v in box], outline=colour, width=2)
        caption = _caption(
            int(labels[index]), None if scores is None else scores[index], class_names
        )
        caption = f"{caption} (ignore)" if ignore[index] else caption
        left, top, right, bottom = draw.textbbox((float(box[0]), float(box[1])), caption, font=font)
        offset = bottom - top + 2
        draw.rectangle([left, top - offset, right + 2, bottom - offset], fill=colour)
        draw.text(
            (float(box[0]) + 1, float(box[1]) - offset), caption, fill=(255, 255, 255), font=font
        )
    return picture


def color_splash(image: Any, masks: Any) -> Image.Image:
    """Matterport's colour splash: the masked instances in colour over a grayscale image.

    Args:
        image: uint8 ``[3, H, W]`` tensor (or ``[H, W, 3]`` array).
        masks: bool ``[N, H, W]`` instance masks (None or N = 0: the whole image in grayscale).

    Returns:
        An RGB ``PIL.Image``: original pixels where any mask is set, ITU-R 601 luma elsewhere
        (Pillow's ``convert("L")``, repeated on the three channels).
    """
    array = _hwc_image(image)
    gray = np.asarray(Image.fromarray(array).convert("L").convert("RGB"))
    if masks is None or len(masks) == 0:
        return Image.fromarray(gray)
    keep = _to_numpy(masks).astype(bool).any(0)
    return Image.fromarray(np.where(keep[..., None], array, gray))
