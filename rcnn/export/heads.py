"""Box post-processing, the mask branch and mask pasting as batched tensors (for tracing).

Shape shorthand: B images, P proposals per image, C classes, K detections per image (padded),
S pooled size, M mask size, H/W input image size.

The eager ``RoIHeads.forward_test`` and ``paste_masks`` run per image with data-dependent sizes;
these functions compute the same numbers on padded [B, ...] tensors with validity masks. The
network stages are ``RoIHeads``'s own (``box_features`` -> ``box_predict`` -> ``BoxPredictions``;
``mask_features`` -> ``MaskPredictions``; ``rescore``), called with RoI rows [B * K, 5] (image
index first) instead of per-image lists, so FPN, C4 and Mask Scoring heads export as they run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from rcnn.export.nms import group_nms
from rcnn.export.proposals import (
    clip_to,
    gather_rows,
    grouped_nms,
    large_enough,
    shape_of,
    top_valid,
)
from rcnn.models.maskiou import rescore
from rcnn.models.roi_heads import RoIHeads
from rcnn.ops.masks import bilinear_taps, paste_windows
from rcnn.structures import MaskPredictions


def with_batch_index(boxes: Tensor) -> Tensor:
    """[B, P, 4] -> [B * P, 5] rows ``(image index, x1, y1, x2, y2)``."""
    index = torch.arange(boxes.shape[0], dtype=boxes.dtype, device=boxes.device)
    index = index[:, None, None].expand((*boxes.shape[:2], 1))
    return torch.cat([index, boxes], 2).reshape(-1, 5)


def mask_outputs(roi_heads: RoIHeads, features: list[Tensor], detections, count: int):
    """``RoIHeads.mask_test`` on padded detections: mask probabilities, and with the MaskIoU
    head (Mask Scoring R-CNN) the scores rescored and the rows re-sorted as there.

    Args:
        detections: boxes [B, K, 4], scores [B, K], labels [B, K] and valid bool [B, K]
            (``detect_boxes``); count: K.

    Returns:
        the detections (re-sorted where rescored) and mask probabilities [B * K, M, M].
    """
    boxes, scores, labels, valid = detections
    feats = roi_heads.mask_features(features, with_batch_index(boxes))
    flat_labels = labels.reshape(-1)
    probs = MaskPredictions(roi_heads.mask_head(feats), flat_labels).class_logits().sigmoid()
    if roi_heads.maskiou_head is None:
        return detections, probs
    rescored = rescore(roi_heads.maskiou_head, feats, probs, flat_labels, scores.reshape(-1))
    scores = torch.where(valid, rescored.view_as(scores), torch.zeros_like(scores))
    order, scores, _ = top_valid(scores, valid, count)  # valid rows stay first, best first
    probs = gather_rows(probs.view(*labels.shape, *probs.shape[1:]), order)
    scores = torch.where(valid, scores, torch.zeros_like(scores))
    boxes, labels = gather_rows(boxes, order), gather_rows(labels, order)
    return (boxes, scores, labels, valid), probs.reshape(-1, *probs.shape[2:])


def _pad_candidates(boxes: Tensor, scores: Tensor, labels: Tensor, valid: Tensor, count: int):
    """Append ``count`` invalid candidates, so that a top-``count`` always exists."""
    zeros = torch.zeros_like(scores[:, :1]).expand(-1, count)
    return (
        torch.cat([boxes, zeros[..., None].expand(-1, -1, 4)], 1),
        torch.cat([scores, zeros], 1),
        torch.cat([labels, zeros.to(labels.dtype)], 1),
        torch.cat([valid, zeros > 1], 1),
    )


def class_nms(boxes: Tensor, scores: Tensor, valid: Tensor, num_classes: int, thresh: float):
    """Per-image, per-class NMS of [B, P * C] candidates (proposal-major, class-minor, as
    ``detect_boxes`` lays them out) as B * C groups of P (``rcnn.export.nms``); bool [B, P * C]."""
    batch = boxes.shape[0]

    def by_class(x: Tensor) -> Tensor:  # [B, P * C, ...] -> [B * C, P, ...]
        x = x.reshape(batch, -1, num_classes, *x.shape[2:]).transpose(1, 2)
        return x.reshape(-1, *x.shape[2:])

    kept = group_nms(by_class(boxes), by_class(scores), by_class(valid), thresh)
    return kept.reshape(batch, num_classes, -1).transpose(1, 2).reshape(batch, -1)


def detect_boxes(roi_heads: RoIHeads, features: list[Tensor], proposals, size):
    """``RoIHeads.forward_test``'s boxes for a batch (``postprocess_boxes`` per image, batched).

    Args:
        proposals: (boxes [B, P, 4], bool [B, P]); size: resized (h, w) as tensors.

    Returns:
        boxes [B, K, 4] (resized-image pixels), scores [B, K], labels int64 [B, K] and bool
        [B, K] (real detections first, best first); K = ``detections_per_img``.
    """
    cfg = roi_heads.box_cfg
    boxes, proposal_valid = proposals
    rois = with_batch_index(boxes)
    preds = roi_heads.box_predict(roi_heads.box_features(features, rois))
    cls_logits, deltas = preds.cls_logits, preds.box_deltas
    decoded = roi_heads.box_coder.decode(deltas, boxes.reshape(-1, 4))
    num_classes = deltas.shape[1] // 4
    batch = boxes.shape[0]
    decoded = decoded.view(batch, -1, num_classes, 4)
    if cfg.clip_boxes:  # GluonCV presets: NMS and masks see the boxes as decoded
        decoded = clip_to(decoded, *size)
    decoded = decoded.view(batch, -1, 4)
    scores = F.softmax(cls_logits, -1)[:, 1:].reshape(batch, -1)  # [B, P * C]
    labels = torch.arange(num_classes, device=boxes.device).repeat(boxes.shape[1])
    labels = labels[None].expand_as(scores)
    valid = proposal_valid[:, :, None].expand(-1, -1, num_classes).reshape(batch, -1)
    valid = valid & (scores > cfg.score_thresh)
    if cfg.nms_topk > 0:  # GluonCV's nms_topk: the best pairs enter NMS
        limit = torch.clamp(shape_of(scores)[1], max=cfg.nms_topk)
        order, _, valid = top_valid(scores, valid, limit)
        decoded, scores, labels = (gather_rows(x, order) for x in (decoded, scores, labels))
    valid = valid & large_enough(decoded, cfg.min_size)
    if cfg.nms_topk > 0:  # a few hundred pairs in any order: one NMS, groups shifted apart
        image = torch.arange(batch, device=boxes.device)[:, None]
        kept = grouped_nms(decoded, scores, image * num_classes + labels, valid, cfg.nms_thresh)
    else:
        kept = class_nms(decoded, scores, valid, num_classes, cfg.nms_thresh)
    count = cfg.detections_per_img
    decoded, scores, labels, kept = _pad_candidates(decoded, scores, labels, kept, count)
    order, top_scores, det_valid = top_valid(scores, kept, count)
    zero = torch.zeros_like(top_scores)
    return (
        torch.where(det_valid[..., None], gather_rows(decoded, order), zero[..., None]),
        torch.where(det_valid, top_scores, zero),
        torch.where(det_valid, gather_rows(labels, order), torch.zeros_like(order)),
        det_valid,
    )


def _interp_weights(start: Tensor, length: Tensor, src_size: int, out_size: Tensor) -> Tensor:
    """``rcnn.ops.masks._interp_weights`` as broadcast comparisons (no scatter, dynamic size):
    [N, out, src] bilinear weights of ``src_size`` samples onto pixels ``start .. start+length``."""
    inside, low, high, frac = bilinear_taps(start, length, src_size, out_size)
    grid = torch.arange(src_size, device=start.device)
    weights = (grid == low[..., None]).float() * (1 - frac)[..., None]
    weights = weights + (grid == high[..., None]).float() * frac[..., None]
    return weights * inside[..., None]


def paste_masks_dense(masks: Tensor, boxes: Tensor, height: Tensor, width: Tensor) -> Tensor:
    """``rcnn.ops.masks.paste_masks`` over whole images: bool [N, H, W] from masks [N, M, M]
    and boxes [N, 4] (image pixels); padding 1, threshold 0.5, the same grown, truncated boxes."""
    size = masks.shape[-1]
    padded = F.pad(masks.float(), (1, 1, 1, 1))
    grown = paste_windows(boxes, size)  # the eager paste's windows
    box_w = (grown[:, 2] - grown[:, 0] + 1).clamp(min=1)
    box_h = (grown[:, 3] - grown[:, 1] + 1).clamp(min=1)
    rows = _interp_weights(grown[:, 1], box_h, size + 2, height)
    cols = _interp_weights(grown[:, 0], box_w, size + 2, width)
    return torch.bmm(rows, torch.bmm(padded, cols.transpose(1, 2))) > 0.5


def _aligned_weights(low: Tensor, high: Tensor, size: int, out_size: Tensor) -> Tensor:
    """``rcnn.ops.masks._cell_weights`` over whole image rows or columns, as broadcast comparisons:
    [N, out, size] weights of a ``size``-cell mask spread over ``[low, high)`` (continuous
    coordinates), zero outside the eager paste's window ``[floor(low) - 1, ceil(high) + 1)``."""
    pixels = torch.arange(out_size, device=low.device)[None, :]
    window = (pixels >= low.floor()[:, None] - 1) & (pixels < high.ceil()[:, None] + 1)
    extent = (high - low).clamp(min=1e-6)
    pos = (pixels.float() + 0.5 - low[:, None]) * (size / extent)[:, None] - 0.5
    left = pos.floor()
    frac = pos - left
    cells = torch.arange(size, device=low.device).float()
    weights = (cells == left[..., None]).float() * (1 - frac)[..., None]
    weights = weights + (cells == left[..., None] + 1).float() * frac[..., None]
    return weights * window.float()[..., None]


def paste_masks_aligned_dense(
    masks: Tensor, boxes: Tensor, height: Tensor, width: Tensor
) -> Tensor:
    """``rcnn.ops.masks.paste_masks_aligned`` (``mask_head.paste="aligned"``, Detectron2's
    geometry) over whole images: bool [N, H, W] from masks [N, M, M] and boxes [N, 4]."""
    size = masks.shape[-1]
    rows = _aligned_weights(boxes[:, 1], boxes[:, 3], size, height)
    cols = _aligned_weights(boxes[:, 0], boxes[:, 2], size, width)
    return torch.bmm(rows, torch.bmm(masks.float(), cols.transpose(1, 2))) >= 0.5
