"""Pictures: plot_bbox / plot_mask (GluonCV signatures) and draw_instances on detections/targets."""

from __future__ import annotations

import inspect

import numpy as np
import torch
from matplotlib.patches import Rectangle

from rcnn.data import masks as mask_ops
from rcnn.structures import Detections, Targets
from rcnn.visualize import PALETTE, draw_instances, plot_bbox, plot_mask

IMAGE = torch.full((3, 60, 80), 100, dtype=torch.uint8)


def test_plot_bbox_signature_and_thresholds():
    params = list(inspect.signature(plot_bbox).parameters)
    assert params == ["img", "bboxes", "scores", "labels", "thresh", "class_names", "colors", "ax",
                      "reverse_rgb", "absolute_coordinates", "linewidth", "fontsize"]  # fmt: skip
    boxes = np.array([[10, 10, 30, 40], [5, 5, 20, 20], [0, 0, 10, 10]], dtype=float)
    ax = plot_bbox(IMAGE, boxes, scores=[0.9, 0.3, 0.8], labels=[1, 0, -1], class_names=["a", "b"])
    rectangles = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert len(rectangles) == 1  # score 0.3 under thresh, label -1 is GluonCV padding
    assert rectangles[0].get_xy() == (10, 10) and rectangles[0].get_width() == 20
    assert [t.get_text() for t in ax.texts] == ["b 0.900"]
    relative = plot_bbox(IMAGE.permute(1, 2, 0).numpy(), boxes[:1] / [80, 60, 80, 60],
                         absolute_coordinates=False)  # fmt: skip
    assert relative.patches[0].get_height() == 30


def test_plot_mask_blends_inside_masks_only():
    masks = np.zeros((1, 60, 80), dtype=bool)
    masks[0, 10:20, 10:30] = True
    out = plot_mask(IMAGE, masks, alpha=0.5)
    expected = np.rint(0.5 * 100 + 0.5 * np.array(PALETTE[0])).astype(np.uint8)
    assert (out[15, 15] == expected).all() and (out[40, 60] == 100).all()


def test_draw_instances_accepts_detections_and_targets():
    bool_mask = torch.zeros(2, 60, 80, dtype=torch.bool)
    bool_mask[0, 20:40, 20:50] = True
    detections = Detections(
        boxes=torch.tensor([[20.0, 20.0, 50.0, 40.0], [0.0, 0.0, 5.0, 5.0]]),
        scores=torch.tensor([0.9, 0.1]),
        labels=torch.tensor([0, 1]),
        masks=bool_mask,
    )
    picture = np.asarray(draw_instances(IMAGE, detections, ["cat", "dog"]))
    assert picture.shape == (60, 80, 3)
    assert (picture[30, 35] != 100).any()  # translucent mask inside
    assert (picture[55, 75] == 100).all()  # untouched far away
    assert (picture[2, 2] == 100).all()  # the 0.1-score detection is not drawn
    polygon = np.array([20.0, 20.0, 50.0, 20.0, 50.0, 40.0, 20.0, 40.0])
    targets = Targets(
        boxes=torch.tensor([[20.0, 20.0, 50.0, 40.0]]),
        labels=torch.tensor([1]),
        ignore=torch.tensor([False]),
        image_id=1,
        image_size=(60, 80),
        orig_size=(60, 80),
        masks=[[polygon]],
    )
    from_targets = np.asarray(draw_instances(IMAGE, targets, ["cat", "dog"]))
    assert (from_targets[30, 35] == picture[30, 35]).all()
    rle_targets = Targets(**{**targets.__dict__, "masks": [mask_ops.to_rle([polygon], 60, 80)]})
    assert np.array_equal(
        np.asarray(draw_instances(IMAGE, rle_targets, ["cat", "dog"])), from_targets
    )
