"""Tiled inference for images far larger than the training size (aerial photos, slides, scans).

The model resizes every input to its test size, so on a 4000x3000 photo a 20-pixel object shrinks
to 1-2 pixels and is lost. ``TiledPredictor`` runs the model on overlapping ``tile x tile`` windows
(each resized by the model as usual, so small objects keep their size) plus, by default, the whole
image (for objects larger than a tile), and merges the detections in full-image coordinates:

1. boxes are shifted by their window's offset; masks stay per window until the end;
2. class-wise NMS (``torchvision.ops.batched_nms``) at ``nms_thresh`` removes the duplicates that
   overlapping windows produce;
3. a detection cut by an inner window edge (touching it within ``EDGE_MARGIN`` px) is dropped when
   a higher-scoring detection of its class contains at least ``CONTAINED`` of its box: the object
   was seen whole elsewhere (a neighbouring window, or the whole-image pass);
4. the best ``max_detections`` are kept and their masks pasted into full-resolution bool masks.

Windows start every ``tile * (1 - overlap)`` pixels; the last row and column are aligned with the
image's far edges so that every pixel is covered and no window pads. An object lies whole in some
window when it is smaller than the overlap (``tile * overlap``).

Usage (Python): ``TiledPredictor(model, tile=512, overlap=0.25)(images) -> list[Detections]``;
``rcnn predict --tile 512 --overlap 0.25`` and ``rcnn eval --tile ...`` wrap the model with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms, box_area

from rcnn.structures import Detections

EDGE_MARGIN = 2.0
CONTAINED = 0.8


def window_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets of windows of ``tile`` pixels every ``stride`` along ``length`` pixels, the
    last one ending at ``length`` (one window at 0 when ``length <= tile``)."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def tile_windows(height: int, width: int, tile: int, overlap: float) -> list[tuple[int, ...]]:
    """``(x0, y0, x1, y1)`` windows covering an image of ``height x width``, row by row."""
    stride = max(1, math.floor(tile * (1.0 - overlap)))
    return [
        (x0, y0, min(x0 + tile, width), min(y0 + tile, height))
        for y0 in window_starts(height, tile, stride)
        for x0 in window_starts(width, tile, stride)
    ]


@dataclass
class _Pieces:
    """Detections of all windows of one image, boxes in full-image coordinates.

    Attributes:
        boxes: float ``[N, 4]``; scores, labels: ``[N]``.
        inner_edge: bool ``[N]``: the box touches an edge of its window inside the image.
        window: int ``[N]``: index into ``windows`` of the window each detection came from.
        masks: per window, bool ``[n, h, w]`` masks (or None).
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    inner_edge: Tensor
    window: Tensor
    masks: list[Tensor | None]


def _inner_edge(boxes: Tensor, window: tuple[int, ...], size: tuple[int, int]) -> Tensor:
    x0, y0, x1, y1 = window
    height, width = size
    touches = torch.zeros(len(boxes), dtype=torch.bool)
    sides = (
        (0, x0, x0 > 0, 1),
        (1, y0, y0 > 0, 1),
        (2, x1, x1 < width, -1),
        (3, y1, y1 < height, -1),
    )
    for column, edge, inside, sign in sides:
        if inside:
            touches |= sign * (boxes[:, column] - edge) <= EDGE_MARGIN
    return touches


def _contained_elsewhere(pieces: _Pieces, keep: Tensor) -> Tensor:
    """Among ``keep`` (sorted by score), those cut by an inner edge and contained in a better
    detection of their class (module docstring, step 3); a bool mask over ``keep``."""
    boxes, labels = pieces.boxes[keep], pieces.labels[keep]
    lt = torch.max(boxes[:, None, :2], boxes[None, :, :2])
    rb = torch.min(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    covered = inter / box_area(boxes).clamp(min=1e-6)[:, None]  # share of row i inside column j
    better = torch.ones_like(covered, dtype=torch.bool).triu(1).T  # column j scored higher
    same = labels[:, None] == labels[None, :]
    hidden = ((covered >= CONTAINED) & better & same).any(1)
    return hidden & pieces.inner_edge[keep]


class TiledPredictor(nn.Module):
    """``model`` run on overlapping tiles of each image (see the module docstring).

    Args:
        model: an eval-mode detector, ``model(list of uint8 [3,H,W]) -> list[Detections]``.
        tile: window side in pixels.
        overlap: fraction of a window shared with its neighbour, in ``[0, 1)``.
        full_image: also run the model on the whole image (objects larger than a tile).
        nms_thresh: IoU of the class-wise NMS across windows.
        max_detections: detections kept per image (default: the model's ``detections_per_img``).
        batch_size: windows per model call.
    """

    def __init__(
        self,
        model: nn.Module,
        tile: int,
        overlap: float = 0.2,
        *,
        full_image: bool = True,
        nms_thresh: float = 0.5,
        max_detections: int | None = None,
        batch_size: int = 4,
    ) -> None:
        super().__init__()
        if tile < 32 or not 0.0 <= overlap < 1.0:
            raise ValueError(f"tile must be >= 32 and overlap in [0, 1), got {tile}, {overlap}")
        self.model, self.tile, self.overlap = model, int(tile), float(overlap)
        self.full_image, self.nms_thresh, self.batch_size = full_image, nms_thresh, batch_size
        cfg = getattr(model, "cfg", None)
        default = getattr(getattr(cfg, "box_head", None), "detections_per_img", 100)
        self.max_detections = int(max_detections or default)
        self.class_names = list(getattr(model, "class_names", []))
        self.has_mask = getattr(model, "has_mask", False)
        self.label_to_category_id = getattr(model, "label_to_category_id", None)

    @property
    def dropped(self) -> int:
        """Detections the wrapped model dropped (``DatasetLabels``), for the eval report."""
        return int(getattr(self.model, "dropped", 0))

    def forward(self, images: list[Tensor]) -> list[Detections]:
        return [self.predict_one(image) for image in images]

    def predict_one(self, image: Tensor) -> Detections:
        """Merged detections of one uint8 ``[3, H, W]`` image, on the CPU."""
        height, width = int(image.shape[-2]), int(image.shape[-1])
        windows = tile_windows(height, width, self.tile, self.overlap)
        if len(windows) == 1:
            return self.model([image])[0].to("cpu")
        if self.full_image:
            windows = [(0, 0, width, height), *windows]
        pieces = self._run_windows(image, windows)
        keep = batched_nms(pieces.boxes, pieces.scores, pieces.labels, self.nms_thresh)
        keep = keep[~_contained_elsewhere(pieces, keep)][: self.max_detections]
        masks = self._paste(pieces, keep, windows=windows, size=(height, width))
        return Detections(pieces.boxes[keep], pieces.scores[keep], pieces.labels[keep], masks)

    def _run_windows(self, image: Tensor, windows: list[tuple[int, ...]]) -> _Pieces:
        size = (int(image.shape[-2]), int(image.shape[-1]))
        parts: list[tuple[Tensor, ...]] = []
        masks: list[Tensor | None] = []
        for start in range(0, len(windows), self.batch_size):
            chunk = windows[start : start + self.batch_size]
            crops = [image[:, y0:y1, x0:x1] for x0, y0, x1, y1 in chunk]
            for offset, (window, dets) in enumerate(zip(chunk, self.model(crops), strict=True)):
                dets = dets.to("cpu")
                shift = torch.tensor(window[:2] * 2, dtype=dets.boxes.dtype)
                boxes = dets.boxes + shift
                index = torch.full((len(dets),), start + offset, dtype=torch.int64)
                parts.append(
                    (boxes, dets.scores, dets.labels, _inner_edge(boxes, window, size), index)
                )
                masks.append(dets.masks)
        merged = [torch.cat(column) for column in zip(*parts, strict=True)]
        return _Pieces(*merged, masks=masks)

    def _paste(
        self,
        pieces: _Pieces,
        keep: Tensor,
        *,
        windows: list[tuple[int, ...]],
        size: tuple[int, int],
    ) -> Tensor | None:
        """Full-resolution bool ``[K, H, W]`` masks of the kept detections (None: no masks)."""
        if not self.has_mask or any(m is None for m in pieces.masks):
            return None
        first = torch.zeros(len(windows), dtype=torch.int64)  # index of each window's first row
        counts = torch.bincount(pieces.window, minlength=len(windows))
        first[1:] = counts.cumsum(0)[:-1]
        out = torch.zeros((len(keep), *size), dtype=torch.bool)
        for row, k in enumerate(keep.tolist()):
            w = int(pieces.window[k])
            x0, y0, x1, y1 = windows[w]
            out[row, y0:y1, x0:x1] = pieces.masks[w][k - int(first[w])]
        return out
