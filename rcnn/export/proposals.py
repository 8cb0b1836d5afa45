"""Preprocessing, anchors and RPN proposals as batched tensors with dynamic shapes (for tracing).

Shape shorthand: B images, H/W input size, h/w resized size, Hp/Wp padded size, L levels,
N_l anchors of level l, K candidates per image, P proposals per image.

``RCNN.predict`` loops over images in Python and sizes things with Python ints; tracing would
unroll those loops and freeze those ints into the graph. Here every size is read from a tensor's
shape (``torch._shape_as_tensor``), every per-image step is one batched op (top-k on dim 1, one
NMS over all images with per-image / per-level groups), and entries that the eager path drops
are kept and masked instead. The arithmetic is the eager path's, step for step, so the traced
graph gives the same detections (tests/export).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import batched_nms

from rcnn.export.resize import bilinear_resize
from rcnn.models.anchors import AnchorGenerator
from rcnn.models.config import InputConfig
from rcnn.models.rpn import RPN
from rcnn.ops.boxes import BoxCoder


def shape_of(x: Tensor) -> Tensor:
    """int64 [x.dim()]: the shape as a tensor (an ONNX ``Shape`` when traced)."""
    return torch._shape_as_tensor(x)


def clamp_k(k: int, available: Tensor) -> Tensor:
    """``min(k, available)`` as an int64 0-d tensor (a dynamic top-k size)."""
    return torch.clamp(available, max=k)


def resized_size(height: Tensor, width: Tensor, cfg: InputConfig) -> tuple[Tensor, Tensor]:
    """The test resize's output size: ``floor(side * min(short / min, max_size / max))``.

    In float64, as ``F.interpolate(scale_factor=..., recompute_scale_factor=True)`` computes it in
    ``rcnn.models.rcnn.test_resize`` (Python floats), so the sizes agree to the pixel. The
    values are 1-element tensors, not 0-d: the exporter's scalar type analysis turns 0-d float64
    arithmetic into float32, which gives 119 for ``floor(600 * 0.2)``.

    Args:
        height, width: int64 0-d tensors. Returns: the resized (h, w), int64 0-d tensors.
    """
    h, w = height.reshape(1).to(torch.float64), width.reshape(1).to(torch.float64)
    short = torch.full((1,), float(cfg.test_short), dtype=torch.float64)
    longest = torch.full((1,), float(cfg.max_size), dtype=torch.float64)
    scale = torch.minimum(short / torch.minimum(h, w), longest / torch.maximum(h, w))
    return torch.floor(h * scale).to(torch.int64)[0], torch.floor(w * scale).to(torch.int64)[0]


def preprocess(
    images: Tensor, mean: Tensor, std: Tensor, cfg: InputConfig
) -> tuple[Tensor, Tensor, Tensor]:
    """uint8 [B, 3, H, W] -> normalised, resized, zero-padded float [B, 3, Hp, Wp].

    ``RCNN.normalize`` + ``test_resize`` + ``pad_batch`` for a batch of equal-size images.

    Returns:
        the batch tensor, and the resized size (h, w) as int64 0-d tensors.
    """
    x = images.float() / 255.0
    if cfg.pixel_range != 1.0:
        x = x * cfg.pixel_range
    if cfg.bgr:
        x = x.flip(1)
    x = (x - mean[None]) / std[None]
    shape = shape_of(images)
    height, width = resized_size(shape[2], shape[3], cfg)
    if torch.onnx.is_in_onnx_export():  # onnxruntime's Resize rounds otherwise (resize.py)
        x = bilinear_resize(x, height, width)
    else:  # the eager kernel itself, so that the graph in PyTorch is the model on any CPU
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
    div = cfg.size_divisibility
    pad_h = (height + div - 1) // div * div - height
    pad_w = (width + div - 1) // div * div - width
    return F.pad(x, (0, pad_w, 0, pad_h)), height, width


def level_anchors(
    generator: AnchorGenerator, features: list[Tensor], padded: Tensor
) -> list[Tensor]:
    """Anchors [N_l, 4] per level for a padded batch ([B, 3, Hp, Wp]): ``AnchorGenerator``'s
    grid (location-major, anchor-minor), with the feature sizes and strides as tensors."""
    image = shape_of(padded)
    out = []
    for level, feature in enumerate(features):
        grid = shape_of(feature)
        if generator.style == "torchvision":
            stride_y, stride_x = image[2] // grid[2], image[3] // grid[3]
        else:
            stride_y = stride_x = torch.tensor(generator.strides[level])
        offset = getattr(generator, "offset", 0.0)  # Detectron2's anchor offset (else 0)
        ys = (torch.arange(feature.shape[2], dtype=torch.float32) + offset) * stride_y.float()
        xs = (torch.arange(feature.shape[3], dtype=torch.float32) + offset) * stride_x.float()
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        shifts = torch.stack([xx, yy, xx, yy], dim=-1).reshape(-1, 1, 4)
        cell = generator.cell_anchors[level].to(padded.device)
        out.append((shifts + cell[None]).reshape(-1, 4))
    return out


def clip_to(boxes: Tensor, height: Tensor, width: Tensor) -> Tensor:
    """``rcnn.ops.boxes.clip_boxes`` with a tensor size: boxes [..., 4] into [0, w] x [0, h]."""
    x = torch.minimum(boxes[..., 0::2].clamp(min=0), width.to(boxes.dtype))
    y = torch.minimum(boxes[..., 1::2].clamp(min=0), height.to(boxes.dtype))
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def large_enough(boxes: Tensor, min_size: float) -> Tensor:
    """bool [...]: width and height of boxes [..., 4] both >= ``min_size`` (``remove_small``)."""
    return ((boxes[..., 2] - boxes[..., 0]) >= min_size) & (
        (boxes[..., 3] - boxes[..., 1]) >= min_size
    )


def grouped_nms(boxes: Tensor, scores: Tensor, groups: Tensor, valid: Tensor, thresh: float):
    """Per-group NMS of [B, K] candidates at once; returns bool [B, K]: kept and valid.

    Invalid candidates become zero-area boxes, which overlap nothing, so they suppress none of
    the valid ones (the eager path removes them before its NMS).

    Args:
        boxes: [B, K, 4]; scores: [B, K]; groups: int64 [B, K] (image and level or class);
        valid: bool [B, K].
    """
    flat_boxes = torch.where(valid[..., None], boxes, torch.zeros_like(boxes)).reshape(-1, 4)
    keep = batched_nms(flat_boxes, scores.reshape(-1), groups.reshape(-1), thresh)
    flat = torch.zeros_like(scores).reshape(-1)
    kept = flat.scatter(0, keep, torch.ones_like(keep, dtype=flat.dtype)) > 0
    return kept.view_as(valid) & valid


def top_valid(scores: Tensor, valid: Tensor, k: Tensor | int) -> tuple[Tensor, Tensor, Tensor]:
    """Per image, the ``k`` best valid entries of scores [B, K], best first.

    Returns:
        indices int64 [B, k], their scores [B, k] and bool [B, k]: whether each is valid.
    """
    masked = torch.where(valid, scores, torch.full_like(scores, float("-inf")))
    top = masked.topk(k, dim=1)
    return top.indices, top.values, torch.isfinite(top.values)


def gather_rows(x: Tensor, index: Tensor) -> Tensor:
    """``x[b, index[b, j]]`` for x [B, K, ...] and index [B, k] -> [B, k, ...]."""
    shape = index.shape + x.shape[2:]
    expanded = index.reshape(index.shape + (1,) * (x.dim() - 2)).expand(shape)
    return x.gather(1, expanded)


def _candidates(logits: list[Tensor], per_level: bool, topk: int) -> tuple[Tensor, Tensor]:
    """``rcnn.models.rpn._top_candidates``: indices [B, K] into the concatenated anchors, and
    the level [1, K] of each."""
    if not per_level:
        flat = torch.cat(logits, 1)
        idx = flat.topk(clamp_k(topk, shape_of(flat)[1]), dim=1).indices
        return idx, torch.zeros_like(idx[:1])
    out, level_ids = [], []
    offset = torch.zeros((), dtype=torch.int64)
    for level, level_logits in enumerate(logits):
        size = shape_of(level_logits)[1]
        idx = level_logits.topk(clamp_k(topk, size), dim=1).indices
        out.append(idx + offset)
        level_ids.append(torch.full_like(idx[:1], level))
        offset = offset + size
    return torch.cat(out, 1), torch.cat(level_ids, 1)


def rpn_proposals(
    rpn: RPN, features: list[Tensor], padded: Tensor, size: tuple[Tensor, Tensor]
) -> tuple[Tensor, Tensor]:
    """``generate_proposals`` (test mode) for a batch of one resized size.

    Args:
        rpn: the model's RPN (head, anchor generator and config used as they are).
        features: per level [B, D, H_l, W_l]; padded: the batch [B, 3, Hp, Wp]; size: (h, w).

    Returns:
        boxes [B, P, 4] (clipped, best first) and bool [B, P]: which are real proposals.
    """
    cfg = rpn.cfg
    anchors = torch.cat(level_anchors(rpn.anchor_generator, features, padded))
    logits, deltas = rpn.head(features)
    idx, level_ids = _candidates(logits, cfg.per_level, cfg.pre_nms_topk[1])
    top_logits = torch.cat(logits, 1).gather(1, idx)
    top_deltas = gather_rows(torch.cat(deltas, 1), idx)
    coder = BoxCoder(cfg.box_weights, cfg.box_clip)
    boxes = coder.decode(top_deltas.reshape(-1, 4), anchors[idx].reshape(-1, 4))
    boxes = clip_to(boxes.view(top_deltas.shape), *size)
    scores = torch.sigmoid(top_logits)  # NMS ranks probabilities, as the eager path does
    valid = large_enough(boxes, cfg.min_size) & (scores >= cfg.score_thresh)
    num_levels = len(features)
    image = torch.arange(idx.shape[0], device=idx.device)[:, None]
    kept = grouped_nms(boxes, scores, image * num_levels + level_ids, valid, cfg.nms_thresh)
    k = clamp_k(cfg.post_nms_topk[1], shape_of(idx)[1])
    order, _, proposal_valid = top_valid(scores, kept, k)
    return gather_rows(boxes, order), proposal_valid
