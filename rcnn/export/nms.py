"""NMS of many equal-size groups at once, exported as one ONNX ``NonMaxSuppression`` over a batch.

Shape shorthand: G groups (image x class), N candidates per group, S kept candidates in all.

torchvision's ``batched_nms`` exports (``_batched_nms_coordinate_trick``) as one NMS over every
group, the groups shifted apart: onnxruntime's greedy NMS then compares each kept box with all
the others, whatever their group. The box head of a 90-class model with a score threshold of 0
has 1000 x 90 = 90 000 candidates per image: 21 s per image in onnxruntime on 2 cores of a Zen 3
(benchmarks/README.md). ``NonMaxSuppression`` takes a batch axis of its own, so each group is one
batch entry there, and a box only meets its own group's: 90 NMS of 1000 boxes.
"""

from __future__ import annotations

import sys

import torch
from torch import Tensor
from torchvision.ops import batched_nms


class _GroupNMS(torch.autograd.Function):
    """PyTorch: torchvision's ``batched_nms``; ONNX: ``NonMaxSuppression`` with G batch entries."""

    @staticmethod
    def forward(ctx, boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
        """boxes [G, N, 4], scores [G, N] -> kept int64 [S, 3] ``(group, 0, candidate)``, as the
        ONNX operator lists them (group by group, best first)."""
        groups, count = scores.shape
        group = torch.arange(groups, device=boxes.device).repeat_interleave(count)
        keep = batched_nms(boxes.reshape(-1, 4), scores.reshape(-1), group, iou_threshold)
        keep = keep[torch.argsort(group[keep], stable=True)]
        return torch.stack([keep // count, torch.zeros_like(keep), keep % count], 1)

    @staticmethod
    def symbolic(g, boxes, scores, iou_threshold: float):
        scores = g.op("Unsqueeze", scores, g.op("Constant", value_t=torch.tensor([1])))
        return g.op(
            "NonMaxSuppression",
            boxes,
            scores,
            g.op("Constant", value_t=torch.tensor([sys.maxsize], dtype=torch.int64)),
            g.op("Constant", value_t=torch.tensor([iou_threshold], dtype=torch.float32)),
        )


def group_nms(boxes: Tensor, scores: Tensor, valid: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS within each of G groups of N candidates; bool [G, N]: kept and valid.

    Invalid candidates become zero-area boxes, which overlap nothing, so they suppress none of
    the valid ones (as ``rcnn.export.proposals.grouped_nms``).

    Args:
        boxes: [G, N, 4] XYXY; scores: [G, N]; valid: bool [G, N].
    """
    boxes = torch.where(valid[..., None], boxes, torch.zeros_like(boxes))
    kept = _GroupNMS.apply(boxes, scores, iou_threshold)
    flat = kept[:, 0] * torch._shape_as_tensor(scores)[1] + kept[:, 2]
    marks = torch.zeros_like(scores).reshape(-1)
    marks = marks.scatter(0, flat, torch.ones_like(flat, dtype=marks.dtype))
    return (marks > 0).view_as(valid) & valid
