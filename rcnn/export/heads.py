"""RoI pooling, box post-processing and mask pasting as batched tensors (for tracing).

Shape shorthand: B images, P proposals per image, C classes, K detections per image (padded),
S pooled size, M mask size, H/W input image size.

The eager ``RoIHeads.forward_test`` and ``paste_masks`` run per image with data-dependent sizes;
these functions compute the same numbers on padded [B, ...] tensors with validity masks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align, roi_pool

from rcnn.export.nms import group_nms
from rcnn.export.proposals import (
    clip_to,
    gather_rows,
    grouped_nms,
    large_enough,
    shape_of,
    top_valid,
)
from rcnn.ops.masks import bilinear_taps
from rcnn.ops.pooling import MultiLevelRoIPool, assign_fpn_levels


def with_batch_index(boxes: Tensor) -> Tensor:
    """[B, P, 4] -> [B * P, 5] rows ``(image index, x1, y1, x2, y2)``."""
    index = torch.arange(boxes.shape[0], dtype=boxes.dtype, device=boxes.device)
    index = index[:, None, None].expand((*boxes.shape[:2], 1))
    return torch.cat([index, boxes], 2).reshape(-1, 5)


def _pool_level(pool: MultiLevelRoIPool, feature: Tensor, rois: Tensor, stride: int) -> Tensor:
    size = (pool.output_size, pool.output_size)
    if pool.mode == "pool":
        return roi_pool(feature, rois, size, 1.0 / stride)
    return roi_align(feature, rois, size, 1.0 / stride, pool.sampling_ratio, pool.aligned)


def pool_rois(pool: MultiLevelRoIPool, features: list[Tensor], rois: Tensor) -> Tensor:
    """``MultiLevelRoIPool.forward`` on rois [R, 5]: [R, D, S, S], each RoI from its level.

    torchvision's RoIAlign (whose ONNX symbolic torchvision registers). The levels' outputs are
    concatenated and put back in RoI order with one row ``Gather``: onnxruntime's
    ``ScatterElements`` (torchvision's ``_onnx_merge_levels``) copies element by element, 0.5 s
    for 1000 RoIs of 256 x 7 x 7 on 2 Zen 3 cores.
    """
    if len(pool.strides) == 1:
        return _pool_level(pool, features[0], rois, pool.strides[0])
    levels = assign_fpn_levels(
        rois[:, 1:],
        pool.levels[0],
        pool.levels[-1],
        canonical_scale=pool.canonical_scale,
        canonical_level=pool.canonical_level,
        rule=pool.level_rule,
    )
    indices, pooled = [], []
    for feature, level, stride in zip(features, pool.levels, pool.strides, strict=False):
        idx = torch.where(levels == level)[0]
        indices.append(idx)
        pooled.append(_pool_level(pool, feature, rois[idx], stride))
    order = torch.cat(indices)  # a permutation of the RoIs: level by level
    position = torch.zeros_like(order).scatter(0, order, torch.arange(order.shape[0]))
    return torch.cat(pooled).index_select(0, position)


def box_outputs(roi_heads: nn.Module, features: list[Tensor], rois: Tensor):
    """Class logits [R, C+1] and deltas [R, 4C] (``RoIHeads.box_forward``; C4: res5 + mean)."""
    pooled = pool_rois(roi_heads.box_pool, features, rois)
    if hasattr(roi_heads, "res5"):
        return roi_heads.box_predictor(roi_heads.res5(pooled).mean(dim=(2, 3)))
    step = roi_heads.box_cfg.pool_downsample
    if step > 1:  # RoIHeads.box_features: GluonCV's AvgPool2D(3, strides=2, padding=1) for 2
        pooled = F.avg_pool2d(pooled, 2 * step - 1, stride=step, padding=step - 1)
    return roi_heads.box_predictor(roi_heads.box_head(pooled))


def mask_probabilities(roi_heads: nn.Module, features: list[Tensor], boxes: Tensor, labels):
    """Mask probabilities [B * K, M, M] of boxes [B, K, 4] for their labels [B, K]."""
    rois = with_batch_index(boxes)
    if hasattr(roi_heads, "res5"):
        pooled = roi_heads.res5(pool_rois(roi_heads.box_pool, features, rois))
    else:
        pooled = pool_rois(roi_heads.mask_pool, features, rois)
    logits = roi_heads.mask_head(pooled)  # [B * K, C, M, M]
    index = labels.reshape(-1, 1, 1, 1).expand((-1, 1, *logits.shape[2:]))
    return logits.gather(1, index)[:, 0].sigmoid()


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


def detect_boxes(roi_heads: nn.Module, features: list[Tensor], proposals, size):
    """``RoIHeads.forward_test``'s boxes for a batch (``postprocess_boxes`` per image, batched).

    Args:
        proposals: (boxes [B, P, 4], bool [B, P]); size: resized (h, w) as tensors.

    Returns:
        boxes [B, K, 4] (resized-image pixels), scores [B, K], labels int64 [B, K] and bool
        [B, K] (real detections first, best first); K = ``detections_per_img``.
    """
    cfg = roi_heads.box_cfg
    boxes, proposal_valid = proposals
    cls_logits, deltas = box_outputs(roi_heads, features, with_batch_index(boxes))
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
    scale = (size + 2) / size
    half_w = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    half_h = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    ctr_x = (boxes[:, 2] + boxes[:, 0]) * 0.5
    ctr_y = (boxes[:, 3] + boxes[:, 1]) * 0.5
    grown = torch.stack((ctr_x - half_w, ctr_y - half_h, ctr_x + half_w, ctr_y + half_h), 1)
    grown = grown.to(torch.int64)  # truncation toward zero, as torchvision
    box_w = (grown[:, 2] - grown[:, 0] + 1).clamp(min=1)
    box_h = (grown[:, 3] - grown[:, 1] + 1).clamp(min=1)
    rows = _interp_weights(grown[:, 1], box_h, size + 2, height)
    cols = _interp_weights(grown[:, 0], box_w, size + 2, width)
    return torch.bmm(rows, torch.bmm(padded, cols.transpose(1, 2))) > 0.5
