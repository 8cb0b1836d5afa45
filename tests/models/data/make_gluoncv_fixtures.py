"""Reference numbers from GluonCV (the seed system) for tests/models/test_gluoncv_fixtures.py.

Run by hand, never in CI (GluonCV + MXNet are not dependencies of rcnn), with a side virtualenv
holding ``mxnet`` and ``gluoncv`` (here: /tmp/gcv, gluoncv 0.11.0, mxnet 1.9.1):

    /tmp/gcv/bin/python tests/models/data/make_gluoncv_fixtures.py

It writes ``gluoncv_anchors.json`` (``RPNAnchorGenerator`` of the C4 and FPN models on small
feature maps) and ``gluoncv_rpn_targets.json`` (``RPNTargetGenerator`` on the C4 anchors of one
image with three ground-truth boxes: labels before sampling, box targets / masks, and the counts
after sampling 256 anchors).
"""

from __future__ import annotations

import json
from pathlib import Path

import mxnet as mx
import numpy as np
from gluoncv import __version__ as gluoncv_version
from gluoncv.model_zoo.rcnn.rpn.anchor import RPNAnchorGenerator
from gluoncv.model_zoo.rcnn.rpn.rpn_target import RPNTargetGenerator

OUT = Path(__file__).resolve().parent
RATIOS = (0.5, 1, 2)
SCALES = (2, 4, 8, 16, 32)
C4_FEATURE = (3, 4)  # (H, W) of the stride-16 feature map
FPN_FEATURES = ((6, 8), (3, 4), (2, 2), (1, 1), (1, 1))  # P2..P6 of a 24x32 input
FPN_STRIDES = (4, 8, 16, 32, 64)
IMAGE = (96, 128)  # (H, W) of the image the RPN targets are computed for (C4: 6x8 feature map)
LARGE_IMAGE = (320, 480)
GT_BOXES = [[10.0, 12.0, 60.0, 70.0], [70.0, 20.0, 126.0, 60.0], [30.0, 40.0, 52.0, 56.0]]


def anchors(stride, scales, feature, alloc=(16, 16)):
    gen = RPNAnchorGenerator(stride, 16, RATIOS, scales, alloc)
    gen.initialize()
    return gen(mx.nd.zeros((1, 1, *feature))).asnumpy().reshape(-1, 4)


def rpn_targets():
    anchor = anchors(16, SCALES, (IMAGE[0] // 16, IMAGE[1] // 16))
    bbox = mx.nd.array(GT_BOXES)
    # num_sample larger than the anchor count: nothing is subsampled, so these are the labels
    # before sampling
    full = RPNTargetGenerator(num_sample=100000, pos_iou_thresh=0.7, neg_iou_thresh=0.3)
    cls, box, mask = full(bbox, mx.nd.array(anchor), IMAGE[1], IMAGE[0])
    np.random.seed(0)
    sampled = RPNTargetGenerator(num_sample=256, pos_iou_thresh=0.7, neg_iou_thresh=0.3)
    cls_s, _, _ = sampled(bbox, mx.nd.array(anchor), IMAGE[1], IMAGE[0])
    cls, cls_s = np.asarray(cls), np.asarray(cls_s)
    return {
        "image_size": list(IMAGE),
        "gt_boxes": GT_BOXES,
        "anchors": anchor.tolist(),
        "labels": cls.astype(int).tolist(),
        "box_targets": np.asarray(box).tolist(),
        "box_masks": np.asarray(mask).tolist(),
        "sampled_num_pos": int((cls_s > 0).sum()),
        "sampled_num_neg": int((cls_s == 0).sum()),
        **large_image_counts(),
    }


def large_image_counts():
    """Counts after sampling where there are more negatives than the quota (a 320x480 image)."""
    height, width = LARGE_IMAGE
    anchor = mx.nd.array(anchors(16, SCALES, (height // 16, width // 16), alloc=(32, 32)))
    bbox = mx.nd.array([*GT_BOXES, [200.0, 100.0, 400.0, 300.0]])
    np.random.seed(0)
    cls, _, _ = RPNTargetGenerator(num_sample=256)(bbox, anchor, width, height)
    full, _, _ = RPNTargetGenerator(num_sample=100000)(bbox, anchor, width, height)
    cls, full = np.asarray(cls), np.asarray(full)
    return {
        "large_image_size": list(LARGE_IMAGE),
        "large_gt_boxes": bbox.asnumpy().tolist(),
        "large_num_pos_before": int((full > 0).sum()),
        "large_num_neg_before": int((full == 0).sum()),
        "large_sampled_num_pos": int((cls > 0).sum()),
        "large_sampled_num_neg": int((cls == 0).sum()),
    }


def main():
    note = (
        f"made by tests/models/data/make_gluoncv_fixtures.py with gluoncv {gluoncv_version}, "
        f"mxnet {mx.__version__}"
    )
    fpn = [
        anchors(stride, (scale,), feature).tolist()
        for stride, scale, feature in zip(FPN_STRIDES, SCALES, FPN_FEATURES, strict=True)
    ]
    anchor_fixture = {
        "_comment": note + ": RPNAnchorGenerator(stride, base_size=16, ratios, scales)",
        "ratios": RATIOS,
        "scales": SCALES,
        "c4": {
            "stride": 16,
            "feature": C4_FEATURE,
            "anchors": anchors(16, SCALES, C4_FEATURE).tolist(),
        },
        "fpn": {"strides": FPN_STRIDES, "features": FPN_FEATURES, "anchors": fpn},
    }
    (OUT / "gluoncv_anchors.json").write_text(json.dumps(anchor_fixture))
    target_fixture = {"_comment": note + ": RPNTargetGenerator(pos 0.7, neg 0.3)", **rpn_targets()}
    (OUT / "gluoncv_rpn_targets.json").write_text(json.dumps(target_fixture))


if __name__ == "__main__":
    main()
