"""RoI pooling over one feature map or over FPN levels.

Shape shorthand: B images, R RoIs (all images), D channels, S output size, L levels.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchvision.ops import roi_pool

from rcnn.ops.roi_align import roi_align


def assign_fpn_levels(
    boxes: Tensor,
    min_level: int,
    max_level: int,
    *,
    canonical_scale: int = 224,
    canonical_level: int = 4,
    rule: str = "torchvision",
) -> Tensor:
    """FPN level of each RoI: ``floor(k0 + log2(sqrt(wh) / 224))`` (Lin et al. 2017, eq. 1).

    Args:
        boxes: [R, 4] XYXY.
        rule: ``"torchvision"`` (poolers.py: ``+ 1e-6`` after the log) or ``"gluoncv"``
            (``_pyramid_roi_feats``: inclusive sizes ``w + 1``, ``h + 1``; ``+ 1e-6`` inside the
            log).

    Returns:
        int64 [R] levels in ``[min_level, max_level]`` (absolute, e.g. 2..5), clamped.
    """
    if rule == "gluoncv":
        sizes = torch.sqrt((boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1))
        levels = torch.floor(canonical_level + torch.log2(sizes / canonical_scale + 1e-6))
        return levels.clamp(min=min_level, max=max_level).to(torch.int64)
    if rule != "torchvision":
        raise ValueError(f"box_head.level_rule must be 'torchvision' or 'gluoncv', got {rule!r}")
    sizes = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    # the 1e-6 keeps a box of exactly 224 px on level 4 despite float error (torchvision poolers)
    levels = torch.floor(canonical_level + torch.log2(sizes / canonical_scale) + 1e-6)
    return levels.clamp(min=min_level, max=max_level).to(torch.int64)


def rois_with_batch_index(boxes: list[Tensor]) -> Tensor:
    """[R, 5] rows ``(image index, x1, y1, x2, y2)`` from one [R_i, 4] tensor per image."""
    index = [
        torch.full((len(b), 1), i, dtype=b.dtype, device=b.device) for i, b in enumerate(boxes)
    ]
    return torch.cat([torch.cat(index, 0), torch.cat(boxes, 0)], dim=1)


class MultiLevelRoIPool(nn.Module):
    """RoIAlign / RoIPool of each RoI on its FPN level (or on the single level given).

    Args:
        strides: stride of each feature level passed in, e.g. (4, 8, 16, 32) for P2-P5.
        output_size: S.
        sampling_ratio: RoIAlign samples per bin side (2 in torchvision and GluonCV FPN models).
        mode: ``"align"`` or ``"pool"``.
        aligned: RoIAlign's half-pixel shift (False in torchvision's and GluonCV's models).
    """

    def __init__(
        self,
        strides: tuple[int, ...],
        output_size: int,
        *,
        sampling_ratio: int = 2,
        mode: str = "align",
        aligned: bool = False,
        canonical_scale: int = 224,
        canonical_level: int = 4,
        level_rule: str = "torchvision",
    ) -> None:
        super().__init__()
        if mode not in ("align", "pool"):
            raise ValueError(f"RoI pooling mode must be 'align' or 'pool', got {mode!r}")
        self.strides = tuple(int(s) for s in strides)
        self.levels = tuple(round(math.log2(s)) for s in self.strides)
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio
        self.mode, self.aligned = mode, aligned
        self.canonical_scale, self.canonical_level = canonical_scale, canonical_level
        self.level_rule = level_rule

    def _pool(self, feature: Tensor, rois: Tensor, stride: int) -> Tensor:
        size = (self.output_size, self.output_size)
        if self.mode == "pool":
            return roi_pool(feature, rois, size, 1.0 / stride)
        return roi_align(feature, rois, size, 1.0 / stride, self.sampling_ratio, self.aligned)

    def forward(self, features: list[Tensor], boxes: list[Tensor] | Tensor) -> Tensor:
        """Pool ``boxes`` from ``features`` ([B,D,H,W] each).

        Args:
            boxes: one [R_i, 4] per image (image pixels), or rows [R, 5] ``(image index, x1, y1,
                x2, y2)`` (the exported graph's, whose batch size is not a Python int).

        Returns:
            [R, D, S, S] in the order of ``torch.cat(boxes)`` (of the rows).
        """
        rois = rois_with_batch_index(boxes) if isinstance(boxes, list) else boxes
        rois = rois.to(features[0].dtype)
        if len(features) == 1:
            return self._pool(features[0], rois, self.strides[0])
        levels = assign_fpn_levels(
            rois[:, 1:],
            self.levels[0],
            self.levels[-1],
            canonical_scale=self.canonical_scale,
            canonical_level=self.canonical_level,
            rule=self.level_rule,
        )
        indices, pooled = [], []
        for feature, level, stride in zip(features, self.levels, self.strides, strict=False):
            idx = torch.where(levels == level)[0]
            # every level runs (also when empty) so each feature map stays in the graph
            indices.append(idx)
            pooled.append(self._pool(feature, rois[idx], stride).to(features[0].dtype))
        # back in RoI order by one row gather (exported: ONNX Gather; a ScatterElements merge,
        # torchvision's, copies element by element in onnxruntime: 0.5 s for 1000 R50 RoIs)
        order = torch.cat(indices)
        rank = torch.arange(order.shape[0], device=order.device)
        position = torch.zeros_like(order).scatter(0, order, rank)
        return torch.cat(pooled).index_select(0, position)
