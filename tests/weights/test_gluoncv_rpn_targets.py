"""RPN training targets of the GluonCV presets against GluonCV's own train transform.

``fixtures/make_gluoncv_rpn_targets.py`` ran ``FasterRCNNDefaultTrainTransform`` of a C4 and an
FPN network on a 300 x 452 image with small objects (11 x 16 and 52 x 7: best anchor IoU < 0.3),
boxes on the image edge and ordinary ones. GluonCV lays anchors on the unpadded feature maps; ours
cover the image padded to 320 x 480: the shared anchors must get GluonCV's labels and box targets,
the extra ones (outside the image) must be ignored.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from peer_fixtures import FIXTURES

from rcnn.data.rpn_targets import RPNTargetTransform
from rcnn.models.anchors import AnchorGenerator
from rcnn.models.rpn_targets import RPNTargetGenerator
from rcnn.zoo import get_preset

PRESETS = {"c4": "faster_rcnn_resnet50_v1b_coco", "fpn": "faster_rcnn_fpn_resnet50_v1b_coco"}


def shared_index(our_grids, their_grids, num_anchors: int) -> np.ndarray:
    """For each of GluonCV's anchors (levels concatenated, location-major), our anchor's index."""
    out, ours_offset = [], 0
    for (h_p, w_p), (h_g, w_g) in zip(our_grids, their_grids, strict=True):
        ys, xs, a = np.meshgrid(
            np.arange(h_g), np.arange(w_g), np.arange(num_anchors), indexing="ij"
        )
        out.append(ours_offset + (ys * w_p + xs) * num_anchors + a)
        ours_offset += h_p * w_p * num_anchors
    return np.concatenate([o.ravel() for o in out])


def our_labels(kind: str, ref: dict, *, negatives_last: bool = True):
    cfg = get_preset(PRESETS[kind]).model
    cfg.rpn = replace(cfg.rpn, batch_size_per_image=10**7, negatives_last=negatives_last)
    size = tuple(int(v) for v in ref["image_size"])
    strides = (16,) if cfg.arch == "c4" else (4, 8, 16, 32, 64)
    transform = RPNTargetTransform(
        AnchorGenerator(cfg.anchors, strides),
        RPNTargetGenerator(cfg.rpn),
        strides=strides,
        size_divisibility=cfg.input.size_divisibility,
    )
    anchors = transform.anchors(size)
    boxes = torch.from_numpy(ref["gt_boxes"])
    ignore = torch.zeros(len(boxes), dtype=torch.bool)
    out = RPNTargetGenerator(cfg.rpn)(anchors, boxes, ignore, size)
    padded = [((size[0] + 31) // 32 * 32, (size[1] + 31) // 32 * 32)]
    grids = [(-(-padded[0][0] // s), -(-padded[0][1] // s)) for s in transform.strides]
    return out, grids, transform.anchor_generator.num_anchors


@pytest.mark.parametrize("kind", ["c4", "fpn"])
def test_rpn_targets_equal_gluoncv_transform(kind):
    ref = dict(np.load(FIXTURES / "gluoncv" / f"rpn_targets_{kind}.npz"))
    out, grids, num_anchors = our_labels(kind, ref)
    index = shared_index(grids, [tuple(g) for g in ref["grids"]], num_anchors)
    labels = out.labels.numpy()
    # GluonCV's cls_target: 1 positive, 0 negative, -1 ignored (ours the same after sampling)
    np.testing.assert_array_equal(labels[index], ref["labels"])
    extra = np.setdiff1d(np.arange(len(labels)), index)
    assert len(extra) > 0 and bool((labels[extra] == -1).all())  # padded-only anchors: ignored
    np.testing.assert_allclose(
        out.box_targets.numpy()[index[ref["positives"]]], ref["box_targets"], rtol=1e-5, atol=1e-5
    )


def test_negatives_last_is_what_keeps_small_objects_without_positives():
    ref = dict(np.load(FIXTURES / "gluoncv" / "rpn_targets_fpn.npz"))
    gluoncv_rule, _, _ = our_labels("fpn", ref)
    best_anchor_rule, _, _ = our_labels("fpn", ref, negatives_last=False)
    changed = (gluoncv_rule.labels != best_anchor_rule.labels).nonzero().flatten()
    # the 11 x 16 and 52 x 7 boxes keep their best anchors positive only without the rule
    assert len(changed) > 0
    assert bool((best_anchor_rule.labels[changed] == 1).all())
    assert bool((gluoncv_rule.labels[changed] == 0).all())
