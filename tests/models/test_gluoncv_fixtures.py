"""Anchors and RPN targets against GluonCV's own numbers (fixtures made by
tests/models/data/make_gluoncv_fixtures.py with gluoncv 0.11 / mxnet 1.9)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rcnn.models.anchors import AnchorGenerator
from rcnn.models.config import AnchorConfig, RPNConfig
from rcnn.models.rpn_targets import RPNTargetGenerator

DATA = Path(__file__).resolve().parent / "data"


def load(name: str) -> dict:
    return json.loads((DATA / name).read_text())


def our_anchors(strides, features) -> list[torch.Tensor]:
    generator = AnchorGenerator(AnchorConfig(style="gluoncv"), tuple(strides))
    maps = [torch.empty((0, 0, h, w)) for h, w in features]
    return generator(maps, (0, 0))  # gluoncv style: nominal strides, padded size unused


def test_c4_anchors_equal_gluoncv():
    ref = load("gluoncv_anchors.json")["c4"]
    (ours,) = our_anchors([ref["stride"]], [ref["feature"]])
    assert ours.shape == (3 * 4 * 15, 4)
    assert torch.equal(ours, torch.tensor(ref["anchors"]))


def test_fpn_anchors_equal_gluoncv():
    ref = load("gluoncv_anchors.json")["fpn"]
    ours = our_anchors(ref["strides"], ref["features"])
    for level, (mine, theirs) in enumerate(zip(ours, ref["anchors"], strict=True)):
        assert torch.equal(mine, torch.tensor(theirs)), f"level {level}"


def test_rpn_targets_equal_gluoncv():
    ref = load("gluoncv_rpn_targets.json")
    anchors = torch.tensor(ref["anchors"])
    boxes = torch.tensor(ref["gt_boxes"])
    ignore = torch.zeros(len(boxes), dtype=torch.bool)
    size = tuple(ref["image_size"])
    # GluonCV ignores anchors crossing the image border (allowed_border 0)
    cfg = RPNConfig(allowed_border=0.0, batch_size_per_image=100000)
    out = RPNTargetGenerator(cfg)(anchors, boxes, ignore, size)
    assert torch.equal(out.labels, torch.tensor(ref["labels"]))
    torch.testing.assert_close(out.box_targets, torch.tensor(ref["box_targets"]))
    assert torch.equal(out.box_weights, torch.tensor(ref["box_masks"]))
    sampled = RPNTargetGenerator(RPNConfig(allowed_border=0.0))(anchors, boxes, ignore, size)
    assert int((sampled.labels == 1).sum()) == ref["sampled_num_pos"]
    assert int((sampled.labels == 0).sum()) == ref["sampled_num_neg"]


def test_rpn_sampling_counts_equal_gluoncv():
    ref = load("gluoncv_rpn_targets.json")
    height, width = ref["large_image_size"]
    (anchors,) = our_anchors([16], [(height // 16, width // 16)])
    boxes = torch.tensor(ref["large_gt_boxes"])
    ignore = torch.zeros(len(boxes), dtype=torch.bool)
    generator = RPNTargetGenerator(RPNConfig(allowed_border=0.0))
    _, before = generator.label(anchors, boxes, ignore, (height, width))
    assert int((before == 1).sum()) == ref["large_num_pos_before"]
    assert int((before == 0).sum()) == ref["large_num_neg_before"]
    out = generator(
        anchors, boxes, ignore, (height, width), generator=torch.Generator().manual_seed(0)
    )
    assert int((out.labels == 1).sum()) == ref["large_sampled_num_pos"]
    assert int((out.labels == 0).sum()) == ref["large_sampled_num_neg"]
    # the sample is a subset of the labels before sampling
    assert torch.all((out.labels == -1) | (out.labels == before))
