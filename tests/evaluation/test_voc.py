"""VOC07 11-point and VOC12 all-point AP on a hand-computed case (see voc_cases.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou as tv_box_iou
from voc_cases import AP07_A, AP12_A, CLASSES, _record, detections, records

from rcnn.evaluation import VOCEvaluator, primary_metric
from rcnn.evaluation.voc import box_iou, voc07_ap, voc12_ap
from rcnn.structures import Detections


def evaluate(recs=None, dets=None, **kwargs):
    evaluator = VOCEvaluator(recs or records(), CLASSES, **kwargs)
    dets = dets or detections()
    evaluator.process(list(dets), list(dets.values()))
    return evaluator.evaluate()


def test_hand_computed_ap_07_and_12_differ():
    metrics = evaluate()
    assert pytest.approx(AP12_A) != AP07_A
    assert metrics["voc07"]["per_class"]["a"] == pytest.approx(AP07_A, abs=1e-12)
    assert metrics["voc12"]["per_class"]["a"] == pytest.approx(AP12_A, abs=1e-12)
    assert metrics["voc07"]["per_class"]["b"] == pytest.approx(0.5)
    assert metrics["voc12"]["per_class"]["b"] == pytest.approx(0.5)
    assert math.isnan(metrics["voc07"]["per_class"]["c"])
    assert metrics["voc07"]["mAP"] == pytest.approx((AP07_A + 0.5) / 2)
    assert metrics["voc12"]["mAP"] == pytest.approx((AP12_A + 0.5) / 2)
    assert primary_metric(metrics) == metrics["voc07"]["mAP"]


def test_difficult_match_is_neither_tp_nor_fp():
    """Dropping the detection on the difficult box changes nothing; making the box a normal one
    turns that detection into a TP (4 positives then)."""
    dets = detections()
    keep = dets[1].scores != 0.6
    dets[1] = Detections(dets[1].boxes[keep], dets[1].scores[keep], dets[1].labels[keep])
    assert evaluate(dets=dets)["voc12"]["per_class"]["a"] == pytest.approx(AP12_A)
    recs = records()
    recs[0].ignore[:] = False
    # TP FP TP TP FP TP over 4 positives: envelope 1 to 1/4, 3/4 to 3/4, 4/6 to 1.
    expected = (1 + 3 / 4 * 2 + 4 / 6) / 4
    assert evaluate(recs=recs)["voc12"]["per_class"]["a"] == pytest.approx(expected)


def test_only_processed_images_are_scored():
    recs = [*records(), _record(3, [[0, 0, 50, 50]], [1], [0])]
    assert evaluate(recs=recs)["voc12"]["per_class"]["b"] == pytest.approx(0.5)
    evaluator = VOCEvaluator(recs, CLASSES)  # nothing processed: every image, AP 0
    assert evaluator.evaluate()["voc07"]["per_class"]["a"] == 0.0
    with pytest.raises(ValueError, match="image id 9"):
        evaluator.process([9], [detections()[1]])


def test_ap_formulas_on_devkit_cases():
    recall, precision = np.array([0.5, 1.0]), np.array([1.0, 0.5])
    assert voc12_ap(recall, precision) == pytest.approx(0.75)
    assert voc07_ap(recall, precision) == pytest.approx((6 * 1.0 + 5 * 0.5) / 11)
    assert voc12_ap(np.zeros(0), np.zeros(0)) == 0.0
    assert voc07_ap(np.zeros(0), np.zeros(0)) == 0.0


def test_box_iou_pixel_offset():
    gt = np.array([[0.0, 0.0, 10.0, 10.0]])
    det = np.array([[0.0, 0.0, 10.0, 5.0], [20.0, 20.0, 30.0, 30.0]])
    assert box_iou(det, gt)[:, 0] == pytest.approx([0.5, 0.0])
    # The devkit's inclusive integer boxes: 11x6 over 11x11.
    assert box_iou(det, gt, offset=1.0)[0, 0] == pytest.approx(66 / 121)
    expected = tv_box_iou(torch.from_numpy(det), torch.from_numpy(gt)).numpy()
    assert box_iou(det, gt) == pytest.approx(expected)
