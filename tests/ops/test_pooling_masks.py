"""FPN level assignment, RoI pooling, mask targets and mask pasting against independent values."""

from __future__ import annotations

import numpy as np
import pycocotools.mask as mask_util
import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.ops import MultiScaleRoIAlign

from rcnn.ops.masks import mask_targets, paste_masks, rasterize_polygons_in_box
from rcnn.ops.pooling import MultiLevelRoIPool, assign_fpn_levels


def square(side: float) -> list[float]:
    return [10.0, 10.0, 10.0 + side, 10.0 + side]


def test_fpn_level_rule_by_hand():
    boxes = torch.tensor([square(s) for s in (224, 223.9, 112, 448, 1000, 10, 56)])
    levels = assign_fpn_levels(boxes, 2, 5)
    assert levels.tolist() == [4, 3, 3, 5, 5, 2, 2]


def test_multilevel_roi_align_equals_torchvision():
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(2, 4, 64 // s, 80 // s, generator=g) for s in (1, 2, 4, 8)]
    boxes = [
        torch.tensor([[0.0, 0, 200, 150], [10, 20, 40, 60]]),
        torch.tensor([[5.0, 5, 300, 250]]),
    ]
    ours = MultiLevelRoIPool((4, 8, 16, 32), 7, sampling_ratio=2)(feats, boxes)
    ref = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)(
        dict(zip("0123", feats, strict=True)), boxes, [(256, 320), (256, 320)]
    )
    torch.testing.assert_close(ours, ref)


def test_polygon_targets_are_the_cropped_rasterised_polygon():
    rect = [np.array([10, 10, 30, 10, 30, 20, 10, 20], dtype=np.float64)]
    out = rasterize_polygons_in_box(rect, np.array([10.0, 10.0, 50.0, 20.0]), 8)
    expected = np.zeros((8, 8), dtype=np.uint8)
    expected[:, :4] = 1  # the rectangle is the left half of the RoI
    np.testing.assert_array_equal(out, expected)
    # a triangle: same as rasterising the hand-transformed polygon with the COCO API
    tri = [np.array([0, 0, 40, 0, 0, 40], dtype=np.float64)]
    box = np.array([0.0, 0.0, 40.0, 20.0])
    hand = np.array([0, 0, 14, 0, 0, 28], dtype=np.float64)  # x * 14/40, y * 14/20
    ref = mask_util.decode(mask_util.merge(mask_util.frPyObjects([hand], 14, 14)))
    np.testing.assert_array_equal(rasterize_polygons_in_box(tri, box, 14), ref)


def test_mask_targets_from_polygons_and_rle_agree():
    bitmap = np.zeros((40, 60), dtype=np.uint8, order="F")
    bitmap[10:30, 20:50] = 1
    rle = mask_util.encode(bitmap)
    poly = [np.array([20, 10, 50, 10, 50, 30, 20, 30], dtype=np.float64)]
    rois = torch.tensor([[20.0, 10.0, 50.0, 30.0], [10.0, 0.0, 60.0, 40.0]])
    matched = torch.tensor([0, 1])
    out = mask_targets([poly, rle], matched, rois, size=10)
    torch.testing.assert_close(out[0], torch.ones(10, 10))
    ref = mask_targets([poly, poly], matched, rois, size=10)
    # RoIAligned bitmap vs rasterised polygon: the same up to boundary pixels
    assert (out[1] != ref[1]).float().mean() < 0.1
    assert out[1].sum() > 0.3 * 100
    assert mask_targets(
        [poly], torch.zeros(0, dtype=torch.long), torch.zeros(0, 4), size=10
    ).shape == (
        0,
        10,
        10,
    )


def test_paste_matches_torchvision_and_fills_the_box():
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(6, 28, 28, generator=g)
    boxes = torch.tensor(
        [
            [10.0, 20, 50, 60],
            [-5, -7, 30, 20],
            [90, 50, 130, 99],
            [3.3, 4.7, 5.1, 80.2],
            [0, 0, 1, 1],
            [20, 30, 20.5, 30.2],
        ]
    )
    ours = paste_masks(masks, boxes, (100, 120))
    ref = paste_masks_in_image(masks[:, None], boxes, (100, 120))[:, 0] > 0.5
    assert torch.equal(ours, ref)
    full = paste_masks(torch.ones(1, 28, 28), torch.tensor([[10.0, 20.0, 50.0, 60.0]]), (100, 120))[
        0
    ]
    # a constant mask fills the box; torchvision's 1-px zero padding may add at most one pixel
    # row/column around it (not the corners)
    assert bool(full[20:60, 10:50].all())
    assert not bool(full[:19].any() or full[62:].any() or full[:, :9].any() or full[:, 52:].any())
    assert int(full.sum()) <= 42 * 42 - 4
    assert paste_masks(torch.zeros(0, 28, 28), torch.zeros(0, 4), (5, 5)).shape == (0, 5, 5)
