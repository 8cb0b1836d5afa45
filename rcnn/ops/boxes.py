"""Box coding and box utilities.

Shape shorthand: N boxes, K classes (box sets per box), H/W image height/width.
Boxes are float XYXY in continuous pixel coordinates (width = x2 - x1, no "+1").
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision.ops import box_area, box_iou

__all__ = ["BoxCoder", "box_area", "box_iou", "clip_boxes", "nonempty", "remove_small"]


class BoxCoder:
    """Encodes boxes as (dx, dy, dw, dh) offsets from reference boxes and decodes them back.

    ``dx = wx * (gx - rx) / rw``, ``dw = ww * log(gw / rw)`` (Girshick et al., Fast R-CNN eq. 6-9;
    torchvision ``_utils.BoxCoder``, GluonCV
    ``NormalizedBoxCenterEncoder`` with stds = 1 / weights).

    Args:
        weights: (wx, wy, ww, wh): torchvision (10, 10, 5, 5) for the box head, 1s for the RPN.
        clip: upper bound of dw, dh before ``exp`` (log(1000/16) in torchvision; 4.14 in GluonCV).
    """

    def __init__(self, weights: tuple[float, ...], clip: float = math.log(1000.0 / 16)) -> None:
        self.weights = tuple(float(w) for w in weights)
        self.clip = float(clip)

    def encode(self, ref_boxes: Tensor, gt_boxes: Tensor) -> Tensor:
        """Offsets that take ``ref_boxes`` [N,4] onto ``gt_boxes`` [N,4]; returns [N,4]."""
        wx, wy, ww, wh = self.weights
        ref_w = ref_boxes[:, 2] - ref_boxes[:, 0]
        ref_h = ref_boxes[:, 3] - ref_boxes[:, 1]
        ref_x = ref_boxes[:, 0] + 0.5 * ref_w
        ref_y = ref_boxes[:, 1] + 0.5 * ref_h
        gt_w = gt_boxes[:, 2] - gt_boxes[:, 0]
        gt_h = gt_boxes[:, 3] - gt_boxes[:, 1]
        gt_x = gt_boxes[:, 0] + 0.5 * gt_w
        gt_y = gt_boxes[:, 1] + 0.5 * gt_h
        dx = wx * (gt_x - ref_x) / ref_w
        dy = wy * (gt_y - ref_y) / ref_h
        dw = ww * torch.log(gt_w / ref_w)
        dh = wh * torch.log(gt_h / ref_h)
        return torch.stack((dx, dy, dw, dh), dim=1)

    def decode(self, deltas: Tensor, ref_boxes: Tensor) -> Tensor:
        """Apply ``deltas`` [N, 4K] to ``ref_boxes`` [N, 4]; returns boxes [N, 4K]."""
        deltas = deltas.to(ref_boxes.dtype)
        wx, wy, ww, wh = self.weights
        ref_w = (ref_boxes[:, 2] - ref_boxes[:, 0])[:, None]
        ref_h = (ref_boxes[:, 3] - ref_boxes[:, 1])[:, None]
        ref_x = ref_boxes[:, 0:1] + 0.5 * ref_w
        ref_y = ref_boxes[:, 1:2] + 0.5 * ref_h
        dx = deltas[:, 0::4] / wx
        dy = deltas[:, 1::4] / wy
        dw = (deltas[:, 2::4] / ww).clamp(max=self.clip)
        dh = (deltas[:, 3::4] / wh).clamp(max=self.clip)
        ctr_x = dx * ref_w + ref_x
        ctr_y = dy * ref_h + ref_y
        half_w = 0.5 * torch.exp(dw) * ref_w
        half_h = 0.5 * torch.exp(dh) * ref_h
        boxes = torch.stack((ctr_x - half_w, ctr_y - half_h, ctr_x + half_w, ctr_y + half_h), dim=2)
        return boxes.flatten(1)


def clip_boxes(boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Clamp boxes [..., 4] into an image of size (H, W)."""
    height, width = image_size
    x = boxes[..., 0::2].clamp(min=0, max=width)
    y = boxes[..., 1::2].clamp(min=0, max=height)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def remove_small(boxes: Tensor, min_size: float) -> Tensor:
    """Indices of boxes [N,4] whose width and height are both >= ``min_size``."""
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    return torch.where((widths >= min_size) & (heights >= min_size))[0]


def nonempty(boxes: Tensor) -> Tensor:
    """bool [N]: boxes with positive width and height."""
    return (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
