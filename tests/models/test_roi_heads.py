"""``rcnn.models.roi_heads``: RoI sampling and detection post-processing on hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from rcnn.errors import UserError
from rcnn.models.config import BoxHeadConfig
from rcnn.models.roi_heads import postprocess_boxes, sample_rois
from rcnn.structures import Proposals, Targets
from rcnn.values import check_values


def target(ignore: tuple[bool, bool] = (False, False)) -> Targets:
    return Targets(
        boxes=torch.tensor([[0.0, 0.0, 10.0, 10.0], [30.0, 30.0, 40.0, 40.0]]),
        labels=torch.tensor([1, 0]),
        ignore=torch.tensor(ignore),
        image_id=1,
        image_size=(64, 64),
        orig_size=(64, 64),
    )


PROPOSALS = Proposals(
    boxes=torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # IoU 1 with GT 0: class 1
            [0.0, 0.0, 10.0, 20.0],  # IoU 0.5 with GT 0 (>= fg 0.5): class 1
            [50.0, 50.0, 60.0, 60.0],  # IoU 0: background
        ]
    ),
    objectness=torch.zeros(3),
)


def test_sample_rois_appends_gt_matches_and_encodes():
    samples = sample_rois([PROPOSALS], [target()], BoxHeadConfig())  # 512 per image: keep all
    (rois,) = samples.rois
    torch.testing.assert_close(rois, torch.cat([PROPOSALS.boxes, target().boxes]))
    assert samples.gt_classes[0].tolist() == [2, 2, 0, 2, 1]  # label + 1, 0 background
    positive = samples.gt_classes[0] > 0
    assert samples.matched[0][positive].tolist() == [0, 0, 0, 1]
    # RoI 1: centre (5, 10), 10 x 20 -> GT 0: centre (5, 5), 10 x 10; weights (10, 10, 5, 5)
    expected = torch.zeros(5, 4)
    expected[1] = torch.tensor([0.0, 10 * (5 - 10) / 20, 0.0, 5 * math.log(10 / 20)])
    torch.testing.assert_close(samples.box_targets[0], expected)
    assert len(samples) == 5 and [len(p) for p in samples.positives()] == [4]


def test_sample_rois_leaves_out_ignored_gt_and_samples_the_fraction():
    samples = sample_rois([PROPOSALS], [target(ignore=(False, True))], BoxHeadConfig())
    assert len(samples.rois[0]) == 4  # the crowd box does not join the RoIs
    cfg = BoxHeadConfig(batch_size_per_image=2, positive_fraction=0.5)
    torch.manual_seed(0)
    small = sample_rois([PROPOSALS, PROPOSALS], [target(), target()], cfg)
    for classes in small.gt_classes:  # one positive and one negative per image
        assert sorted((classes > 0).tolist()) == [False, True]


def test_postprocess_boxes_thresholds_clips_and_suppresses_per_class():
    # softmax rows: [1/5, 3/5, 1/5] and [0.1, 0.1, 0.8] (background first)
    cls_logits = torch.tensor([[0.0, math.log(3), 0.0], [0.0, 0.0, math.log(8)]])
    boxes = torch.tensor(
        [
            [[0.0, 0, 10, 10], [0.0, 0, 10, 10]],  # RoI 0: class 0 (0.6), class 1 (0.2)
            [[1.0, 0, 11, 10], [30.0, 30, 60, 50]],  # RoI 1: class 0 (0.1), class 1 (0.8)
        ]
    )
    cfg = BoxHeadConfig(score_thresh=0.05, nms_thresh=0.5)
    out_boxes, scores, labels = postprocess_boxes(cls_logits, boxes, (40, 40), cfg)
    # class 0 at 0.1 overlaps class 0 at 0.6 (IoU 90/110): suppressed; class 1's box clipped
    torch.testing.assert_close(
        out_boxes, torch.tensor([[30.0, 30, 40, 40], [0.0, 0, 10, 10], [0.0, 0, 10, 10]])
    )
    torch.testing.assert_close(scores, torch.tensor([0.8, 0.6, 0.2]))
    assert labels.tolist() == [1, 0, 1]
    top = postprocess_boxes(cls_logits, boxes, (40, 40), BoxHeadConfig(detections_per_img=2))
    assert top[2].tolist() == [1, 0]
    every = BoxHeadConfig(detections_per_img=-1)  # -1: all (GluonCV's post_nms -1)
    check_values(every)
    assert postprocess_boxes(cls_logits, boxes, (40, 40), every)[2].tolist() == [1, 0, 1]
    with pytest.raises(UserError, match=r"detections_per_img=0 is out of range \[1, inf\) or -1"):
        check_values(BoxHeadConfig(detections_per_img=0))
    high = postprocess_boxes(cls_logits, boxes, (40, 40), BoxHeadConfig(score_thresh=0.5))
    torch.testing.assert_close(high[1], torch.tensor([0.8, 0.6]))
    outside = torch.tensor([[[50.0, 50, 60, 60], [50.0, 50, 60, 60]]])  # clipped to nothing
    none = postprocess_boxes(cls_logits[:1], outside, (40, 40), cfg)
    assert none[0].shape == (0, 4) and none[1].shape == (0,) and none[2].dtype == torch.int64
