"""Comparing two detectors' outputs that agree within float rounding, not bit for bit.

Scores that differ by ~1e-5 (another processor's float rounding, e.g. Intel Sapphire Rapids vs
AMD Zen 3) can flip decisions at their thresholds: which of two near-tied overlapping boxes NMS
keeps, whether a box scoring at the score threshold or at the detection cap stays. So the
comparison matches detections one to one (same label, IoU >= ``match_iou``) and accepts a
detection without a partner only where it sits on such a decision:

- it was suppressed in the other output: a same-label box there overlaps it at IoU >= the NMS
  threshold (less a margin) with a score not lower than its own (less ``score_tol``);
- its score is within ``score_tol`` of the score threshold, or of the lowest kept score of an
  output at the detection cap.

Unmatched detections also have a budget (``max_flips``), so a real difference cannot hide as a
pile of "flips". Shape shorthand: N, M detections.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import box_iou


@dataclass
class Dets:
    """boxes float [N, 4] XYXY, scores float [N], labels int64 [N]."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor


@dataclass
class Decisions:
    """The thresholds at which the detector decides: NMS IoU, score threshold, detection cap."""

    nms_thresh: float = 0.5
    score_thresh: float = 0.05
    cap: int = 100
    score_tol: float = 1e-3
    iou_margin: float = 0.02


def match(ours: Dets, theirs: Dets, match_iou: float = 0.98) -> list[tuple[int, int]]:
    """One-to-one pairs (i in ours, j in theirs): same label, IoU >= ``match_iou``, greedily in
    decreasing score of ``theirs`` and IoU."""
    iou = box_iou(ours.boxes, theirs.boxes)  # [N, M]
    iou[ours.labels[:, None] != theirs.labels[None, :]] = 0
    pairs, used = [], set()
    for j in torch.argsort(theirs.scores, descending=True).tolist():
        if len(ours.boxes) == 0:
            break
        column = iou[:, j].clone()
        column[list(used)] = 0
        i = int(column.argmax())
        if float(column[i]) >= match_iou:
            pairs.append((i, j))
            used.add(i)
    return pairs


def is_flip(index: int, own: Dets, other: Dets, decisions: Decisions) -> bool:
    """Whether own detection ``index``, missing from ``other``, sits on one of its decisions."""
    score, tol = float(own.scores[index]), decisions.score_tol
    if abs(score - decisions.score_thresh) <= tol:
        return True
    if len(own.scores) >= decisions.cap and score - float(own.scores.min()) <= tol:
        return True
    if len(other.boxes) == 0:
        return False
    same = other.labels == own.labels[index]
    overlap = box_iou(own.boxes[index : index + 1], other.boxes)[0]
    suppressor = same & (overlap >= decisions.nms_thresh - decisions.iou_margin)
    return bool((suppressor & (other.scores >= score - tol)).any())


def unexplained(ours: Dets, theirs: Dets, decisions: Decisions, pairs: list) -> list[str]:
    """Descriptions of detections without a partner that no decision explains (empty: all
    differences are near-tie flips)."""
    problems = []
    sides = (
        (ours, theirs, {i for i, _ in pairs}, "ours"),
        (theirs, ours, {j for _, j in pairs}, "theirs"),
    )
    for own, other, taken, side in sides:
        for index in range(len(own.scores)):
            if index not in taken and not is_flip(index, own, other, decisions):
                box = [round(v, 1) for v in own.boxes[index].tolist()]
                problems.append(f"{side} #{index} score {float(own.scores[index]):.5f} box {box}")
    return problems


def assert_same_detections(
    ours: Dets, theirs: Dets, decisions: Decisions, *, max_flips: int = 2
) -> list[tuple[int, int]]:
    """Matched pairs agree on score (``score_tol`` / 10) and box (1e-3 of the image scale);
    unmatched detections are near-tie flips, at most ``max_flips`` on each side. Returns the
    pairs."""
    pairs = match(ours, theirs)
    problems = unexplained(ours, theirs, decisions, pairs)
    assert not problems, f"detections that differ beyond a near-tie flip: {problems}"
    assert len(ours.scores) - len(pairs) <= max_flips, f"{len(ours.scores)} vs {len(pairs)} matched"
    assert len(theirs.scores) - len(pairs) <= max_flips, f"{len(theirs.scores)} vs {len(pairs)}"
    if pairs:
        i, j = (torch.tensor(index) for index in zip(*pairs, strict=True))
        scale = float(theirs.boxes.abs().max().clamp(min=1))
        torch.testing.assert_close(
            ours.scores[i], theirs.scores[j], atol=decisions.score_tol / 10, rtol=0
        )
        torch.testing.assert_close(ours.boxes[i], theirs.boxes[j], atol=1e-5 * scale + 1e-3, rtol=0)
    return pairs
