"""Matching boxes to ground truth and sampling positives / negatives.

Shape shorthand: G ground-truth boxes, N anchors or proposals.
Label convention of the outputs: 1 positive, 0 negative, -1 ignored.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rcnn.ops.boxes import box_iou

BELOW_LOW = -1
BETWEEN = -2


class Matcher:
    """Assigns each of N boxes the ground truth it overlaps most (Ren et al. 2015, sec. 3.1.2).

    ``iou >= high``: matched; ``iou < low``: ``BELOW_LOW`` (-1, negative);
    otherwise ``BETWEEN`` (-2, ignored). With ``allow_low_quality_matches`` every ground truth's
    best-overlapping boxes (ties included) keep their match even below ``high``
    (torchvision ``_utils.Matcher``, GluonCV ``RPNTargetSampler``).
    """

    def __init__(self, high: float, low: float, *, allow_low_quality_matches: bool = False):
        if low > high:
            raise ValueError(f"Matcher needs low <= high, got low={low}, high={high}")
        self.high, self.low = high, low
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, iou: Tensor) -> Tensor:
        """Match indices int64 [N] in [0, G) or BELOW_LOW / BETWEEN, from ``iou`` [G, N]."""
        num_boxes = iou.shape[1]
        if iou.shape[0] == 0:
            return torch.full((num_boxes,), BELOW_LOW, dtype=torch.int64, device=iou.device)
        best_iou, matches = iou.max(dim=0)
        raw = matches.clone()
        matches[best_iou < self.low] = BELOW_LOW
        matches[(best_iou >= self.low) & (best_iou < self.high)] = BETWEEN
        if self.allow_low_quality_matches:
            best_per_gt = iou.max(dim=1, keepdim=True).values
            # ties count; a ground truth with zero overlap everywhere gets no low-quality match
            _, box_idx = torch.where((iou == best_per_gt) & (best_per_gt > 0))
            matches[box_idx] = raw[box_idx]
        return matches


def match_labels(
    matcher: Matcher, boxes: Tensor, *, gt_boxes: Tensor, gt_ignore: Tensor
) -> tuple[Tensor, Tensor]:
    """Match ``boxes`` [N,4] to ``gt_boxes`` [G,4] with ignore (crowd / difficult) regions.

    Ignored ground truth never makes a positive; a box whose best overlap (> 0) is with an ignored
    region is neither positive nor negative.

    Returns:
        matched int64 [N]: index of the matched ground truth (0 where there is none),
        labels int64 [N]: 1 positive, 0 negative, -1 ignored.
    """
    iou = box_iou(gt_boxes, boxes)
    valid = torch.where(~gt_ignore)[0]
    matches = matcher(iou[valid])
    labels = torch.where(matches >= 0, 1, torch.where(matches == BELOW_LOW, 0, -1))
    matched = valid[matches.clamp(min=0)] if valid.numel() else torch.zeros_like(matches)
    if bool(gt_ignore.any()):
        best_valid = iou[valid].max(dim=0).values if valid.numel() else iou.new_zeros(len(boxes))
        best_ignored = iou[gt_ignore].max(dim=0).values
        labels[(best_ignored > 0) & (best_ignored > best_valid)] = -1
    return matched, labels


class BalancedSampler:
    """Draws at most ``batch_size_per_image`` boxes, a ``positive_fraction`` of them positive.

    Positives short of their quota are made up with negatives (torchvision
    ``BalancedPositiveNegativeSampler``; GluonCV ``RPNTargetSampler`` / ``RCNNTargetSampler``).
    """

    def __init__(self, batch_size_per_image: int, positive_fraction: float) -> None:
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction

    def __call__(self, labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Sampled labels [N]: the input's 1/0 where sampled, -1 elsewhere."""
        pos = torch.where(labels == 1)[0]
        neg = torch.where(labels == 0)[0]
        num_pos = min(pos.numel(), int(self.batch_size_per_image * self.positive_fraction))
        num_neg = min(neg.numel(), self.batch_size_per_image - num_pos)
        device = labels.device
        pos = pos[torch.randperm(pos.numel(), device=device, generator=generator)[:num_pos]]
        neg = neg[torch.randperm(neg.numel(), device=device, generator=generator)[:num_neg]]
        sampled = torch.full_like(labels, -1)
        sampled[pos] = 1
        sampled[neg] = 0
        return sampled
