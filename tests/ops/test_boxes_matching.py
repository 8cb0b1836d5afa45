"""Box coding, IoU, matching and sampling against hand-computed values."""

from __future__ import annotations

import math

import torch

from rcnn.ops.boxes import BoxCoder, box_iou, clip_boxes, remove_small
from rcnn.ops.matching import BETWEEN, BalancedSampler, Matcher, match_labels


def test_box_coder_hand_values_and_round_trip():
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    ref = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    gt = torch.tensor([[5.0, 5.0, 25.0, 15.0]])  # centre (15, 10), 20 x 10
    deltas = coder.encode(ref, gt)
    torch.testing.assert_close(deltas, torch.tensor([[10.0, 5.0, 5 * math.log(2.0), 0.0]]))
    torch.testing.assert_close(coder.decode(deltas, ref), gt)
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=g) * 100
    ref = torch.cat([xy, xy + 1 + torch.rand(50, 2, generator=g) * 50], 1)
    xy = torch.rand(50, 2, generator=g) * 100
    gt = torch.cat([xy, xy + 1 + torch.rand(50, 2, generator=g) * 50], 1)
    torch.testing.assert_close(coder.decode(coder.encode(ref, gt), ref), gt, atol=1e-3, rtol=0)


def test_decode_clips_log_scale_and_handles_classes():
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0), clip=math.log(4.0))
    ref = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    deltas = torch.tensor([[0.0, 0.0, 10.0, 0.0, 0.1, 0.0, 0.0, 0.0]])  # two classes
    out = coder.decode(deltas, ref).view(1, 2, 4)
    torch.testing.assert_close(out[0, 0], torch.tensor([-15.0, 0.0, 25.0, 10.0]))  # w capped 4x
    torch.testing.assert_close(out[0, 1], torch.tensor([1.0, 0.0, 11.0, 10.0]))


def test_iou_clip_and_small_boxes_by_hand():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [2.0, 2.0, 4.0, 4.0]])
    torch.testing.assert_close(box_iou(a, b), torch.tensor([[1 / 7, 0.0]]))
    clipped = clip_boxes(torch.tensor([[-5.0, 2.0, 30.0, 50.0]]), (40, 20))
    torch.testing.assert_close(clipped, torch.tensor([[0.0, 2.0, 20.0, 40.0]]))
    boxes = torch.tensor([[0, 0, 5, 5], [0, 0, 0.5, 5], [0, 0, 5, 1]], dtype=torch.float32)
    assert remove_small(boxes, 1.0).tolist() == [0, 2]


def test_matcher_thresholds_low_quality_and_no_gt():
    iou = torch.tensor([[0.9, 0.5, 0.2, 0.1], [0.1, 0.4, 0.35, 0.0]])
    plain = Matcher(0.7, 0.3)(iou)
    assert plain.tolist() == [0, BETWEEN, BETWEEN, -1]
    # gt 1's best box (box 1) is kept; like torchvision it keeps that box's own best gt (0)
    low_quality = Matcher(0.7, 0.3, allow_low_quality_matches=True)(iou)
    assert low_quality.tolist() == [0, 0, BETWEEN, -1]
    assert Matcher(0.7, 0.3)(torch.zeros((0, 3))).tolist() == [-1, -1, -1]


def test_match_labels_ignores_crowd_regions():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 90.0, 90.0]])
    ignore = torch.tensor([False, True])
    boxes = torch.tensor(
        [
            [0.0, 0.0, 10.0, 11.0],
            [50.0, 50.0, 90.0, 92.0],
            [55.0, 55.0, 60.0, 60.0],
            [200, 200, 210, 210],
        ]
    )
    matched, labels = match_labels(Matcher(0.5, 0.5), boxes, gt_boxes=gt, gt_ignore=ignore)
    assert labels.tolist() == [1, -1, -1, 0]  # a crowd is neither positive nor negative
    assert matched[0] == 0
    # only crowds: nothing positive, overlapping boxes ignored, the rest negative
    _, labels = match_labels(Matcher(0.5, 0.5), boxes, gt_boxes=gt[1:], gt_ignore=ignore[1:])
    assert labels.tolist() == [0, -1, -1, 0]


def test_balanced_sampler_counts():
    labels = torch.cat([torch.ones(300), torch.zeros(1000), -torch.ones(50)]).long()
    out = BalancedSampler(256, 0.5)(labels)
    assert int((out == 1).sum()) == 128 and int((out == 0).sum()) == 128
    assert bool((out[labels == -1] == -1).all())
    assert bool((labels[out == 1] == 1).all()) and bool((labels[out == 0] == 0).all())
    few = torch.cat([torch.ones(10), torch.zeros(1000)]).long()
    out = BalancedSampler(256, 0.5)(few)
    assert int((out == 1).sum()) == 10 and int((out == 0).sum()) == 246
    out = BalancedSampler(256, 0.25)(torch.zeros(20, dtype=torch.long))
    assert int((out == 0).sum()) == 20
