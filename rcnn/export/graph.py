"""The exportable detector: ``RCNN.predict`` as one traceable graph over a uint8 batch.

Shape shorthand: B images, H/W input size, K detections per image (``detections_per_img``),
M mask size.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rcnn.errors import UserError
from rcnn.export.heads import (
    detect_boxes,
    mask_outputs,
    paste_masks_aligned_dense,
    paste_masks_dense,
)
from rcnn.export.proposals import clip_to, preprocess, rpn_proposals, shape_of
from rcnn.models.rcnn import RCNN


class ExportableRCNN(nn.Module):
    """``model``'s eval-mode inference on a batch of equal-size images, as batched tensors.

    The weights are ``model``'s own modules (backbone, RPN head, anchor cells, box coders, RoI
    heads), not copies. ``forward`` gives what the ONNX file gives (docs/CONTRACTS.md, ONNX):
    real detections first in each row, zeros after ``num_detections``.
    """

    def __init__(self, model: RCNN) -> None:
        super().__init__()
        count = model.roi_heads.box_cfg.detections_per_img
        if count <= 0:
            raise UserError(
                f"box_head.detections_per_img is {count}: an exported model needs a fixed "
                "number of detections per image (set a positive value)"
            )
        self.model = model
        self.has_mask = bool(model.has_mask)
        self.detections_per_image = count

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        """Detections of uint8 images [B, 3, H, W] (RGB), in their pixels.

        Returns:
            boxes float [B, K, 4] XYXY, scores float [B, K], labels int64 [B, K] (0-based),
            num_detections int64 [B], and for Mask R-CNN masks uint8 [B, K, H, W] (0/1).
        """
        model = self.model
        shape = shape_of(images)
        batch, height, width = preprocess(
            images, model.pixel_mean, model.pixel_std, model.cfg.input
        )
        size = (height, width)
        features = list(model.backbone(batch).values())
        proposals = rpn_proposals(model.rpn, features, batch, size)
        detections = detect_boxes(model.roi_heads, features, proposals, size)
        if self.has_mask:  # the mask branch; Mask Scoring rescores and re-sorts the rows
            detections, probs = mask_outputs(
                model.roi_heads, features, detections, self.detections_per_image
            )
        boxes, scores, labels, valid = detections
        ratio_h = shape[2].to(torch.float32) / height.to(torch.float32)
        ratio_w = shape[3].to(torch.float32) / width.to(torch.float32)
        raw_boxes = boxes * torch.stack([ratio_w, ratio_h, ratio_w, ratio_h])
        outputs = (raw_boxes, scores, labels, valid.sum(1))
        if not self.has_mask:
            if not model.cfg.box_head.clip_boxes:  # as RCNN.to_raw
                outputs = (clip_to(raw_boxes, shape[2], shape[3]), *outputs[1:])
            return outputs
        paste = paste_masks_aligned_dense if model.cfg.mask_head.paste == "aligned" else None
        masks = (paste or paste_masks_dense)(probs, raw_boxes.reshape(-1, 4), shape[2], shape[3])
        masks = masks & valid.reshape(-1, 1, 1)
        if not model.cfg.box_head.clip_boxes:  # as RCNN.to_raw: clipped after pasting
            outputs = (clip_to(raw_boxes, shape[2], shape[3]), *outputs[1:])
        return (
            *outputs,
            masks.view(images.shape[0], -1, images.shape[2], images.shape[3]).to(torch.uint8),
        )
