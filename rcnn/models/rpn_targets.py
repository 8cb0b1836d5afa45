"""RPN training targets of one image: anchor labels, box targets and box weights.

Shape shorthand: N anchors of the image (all levels, location-major), G ground-truth boxes.

One component, two callers: the model's RPN (``rpn.anchor_targets``) and the data pipeline
(``rcnn.data.rpn_targets``), where GluonCV computes them (in its CPU data workers, seed 001
"RPN training targets"). Given the same anchors, boxes and random stream both give the same result.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rcnn.models.config import RPNConfig
from rcnn.ops.boxes import BoxCoder
from rcnn.ops.matching import BalancedSampler, Matcher, match_labels
from rcnn.structures import RPNTargets

__all__ = ["RPNTargetGenerator", "RPNTargets", "inside_image"]


def inside_image(anchors: Tensor, image_size: tuple[int, int], allowed_border: float) -> Tensor:
    """bool [N]: anchors that stay within ``allowed_border`` pixels of the (H, W) image.

    GluonCV's test (``RPNTargetGenerator``): ``x1 < 0 or y1 < 0 or x2 >= W or y2 >= H`` is outside
    (border 0).
    """
    height, width = image_size
    border = float(allowed_border)
    return (
        (anchors[:, 0] >= -border)
        & (anchors[:, 1] >= -border)
        & (anchors[:, 2] < width + border)
        & (anchors[:, 3] < height + border)
    )


class RPNTargetGenerator:
    """Label anchors against ground truth (Ren et al. 2015, sec. 3.1.2), sample, encode.

    IoU >= ``fg_iou_thresh`` positive, < ``bg_iou_thresh`` negative, each ground truth's best
    anchors positive; ignored (crowd / difficult) regions make neither; then at most
    ``batch_size_per_image`` anchors, ``positive_fraction`` of them positive. With
    ``allowed_border >= 0`` anchors crossing the image border by more are ignored and take no part
    in matching (GluonCV: border 0; torchvision: no border test).

    # deviation from gluoncv: a ground truth's best anchors are those whose IoU equals its maximum
    # exactly (torchvision's ``Matcher``), not within float32 epsilon of it, and a ground truth
    # that overlaps no anchor at all makes no positive (GluonCV's ``RPNTargetSampler`` would then
    # mark every anchor inside the image positive). Both agree on the GluonCV fixtures.
    """

    def __init__(self, cfg: RPNConfig) -> None:
        self.matcher = Matcher(cfg.fg_iou_thresh, cfg.bg_iou_thresh, allow_low_quality_matches=True)
        self.sampler = BalancedSampler(cfg.batch_size_per_image, cfg.positive_fraction)
        self.coder = BoxCoder(cfg.box_weights, cfg.box_clip)
        self.allowed_border = cfg.allowed_border

    def label(
        self, anchors: Tensor, gt_boxes: Tensor, gt_ignore: Tensor, image_size: tuple[int, int]
    ) -> tuple[Tensor, Tensor]:
        """Labels before sampling.

        Args:
            anchors: [N, 4]; gt_boxes: [G, 4]; gt_ignore: bool [G]; image_size: (H, W) unpadded.

        Returns:
            matched int64 [N] (index of the matched ground truth, 0 where none),
            labels int64 [N] (1 / 0 / -1).
        """
        if self.allowed_border < 0:
            return match_labels(self.matcher, anchors, gt_boxes=gt_boxes, gt_ignore=gt_ignore)
        inside = torch.where(inside_image(anchors, image_size, self.allowed_border))[0]
        matched = torch.zeros(len(anchors), dtype=torch.int64, device=anchors.device)
        labels = torch.full_like(matched, -1)
        if len(inside):  # a tiny image may have no anchor inside: nothing to learn from
            matched_in, labels_in = match_labels(
                self.matcher, anchors[inside], gt_boxes=gt_boxes, gt_ignore=gt_ignore
            )
            matched[inside], labels[inside] = matched_in, labels_in
        return matched, labels

    def __call__(
        self,
        anchors: Tensor,
        gt_boxes: Tensor,
        gt_ignore: Tensor,
        image_size: tuple[int, int],
        *,
        generator: torch.Generator | None = None,
    ) -> RPNTargets:
        """Sampled labels, box targets and weights of ``anchors`` [N, 4] (see ``label``).

        ``generator`` draws the sample (the global torch stream when None, as in the model).
        """
        matched, labels = self.label(anchors, gt_boxes, gt_ignore, image_size)
        labels = self.sampler(labels, generator)
        box_targets = torch.zeros_like(anchors)
        pos = torch.where(labels == 1)[0]
        box_targets[pos] = self.coder.encode(anchors[pos], gt_boxes[matched[pos]])
        box_weights = (labels == 1)[:, None].expand_as(box_targets).to(anchors.dtype)
        return RPNTargets(labels, box_targets, box_weights)
