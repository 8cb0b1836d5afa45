"""The parity tests' comparison (``detection_match``): near-tie flips pass, differences fail."""

from __future__ import annotations

import pytest
import torch
from detection_match import Decisions, Dets, assert_same_detections

BOXES = torch.tensor([[10, 10, 50, 50], [12, 10, 52, 50], [100, 100, 140, 160], [0, 0, 20, 30.0]])
SCORES = torch.tensor([0.9, 0.9000049, 0.7, 0.3])
LABELS = torch.tensor([1, 1, 2, 0])
DECISIONS = Decisions(nms_thresh=0.5, score_thresh=0.05, cap=10)


def pick(rows: list[int], scores: torch.Tensor = SCORES) -> Dets:
    return Dets(BOXES[rows], scores[rows], LABELS[rows])


def test_nms_flip_of_near_tied_boxes_passes():
    # boxes 0 and 1 overlap (IoU 0.90) with scores 5e-6 apart: either may survive NMS
    pairs = assert_same_detections(pick([0, 2, 3]), pick([1, 2, 3]), DECISIONS)
    assert sorted(pairs) == [(1, 1), (2, 2)]


def test_a_detection_at_the_score_threshold_may_be_dropped():
    scores = SCORES.clone()
    scores[3] = 0.0502
    assert_same_detections(pick([0, 2, 3], scores), pick([0, 2], scores), DECISIONS)


def test_a_missing_confident_detection_fails():
    with pytest.raises(AssertionError, match="differ beyond a near-tie flip"):
        assert_same_detections(pick([0, 2, 3]), pick([0, 3]), DECISIONS)


def test_a_moved_box_or_changed_score_fails():
    moved = pick([0, 2, 3])
    moved.boxes = moved.boxes.clone()
    moved.boxes[1, 0] += 0.1
    with pytest.raises(AssertionError):
        assert_same_detections(moved, pick([0, 2, 3]), DECISIONS)
    changed = pick([0, 2, 3])
    changed.scores = changed.scores + torch.tensor([0, 5e-4, 0])
    with pytest.raises(AssertionError):
        assert_same_detections(changed, pick([0, 2, 3]), DECISIONS)


def test_suppression_needs_a_score_not_lower_than_the_missing_box():
    # box 1 missing from theirs, but their overlapping box 0 scores 0.5 lower: not an NMS flip
    scores = torch.tensor([0.4, 0.9, 0.7, 0.3])
    with pytest.raises(AssertionError, match="ours #0"):
        assert_same_detections(pick([1, 2], scores), pick([0, 2], scores), DECISIONS)
