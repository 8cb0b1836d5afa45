"""Anchors: torchvision's formula (checked against torchvision) and GluonCV's, by hand."""

from __future__ import annotations

import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList

from rcnn.models.anchors import AnchorGenerator, gluoncv_cell_anchors
from rcnn.models.config import AnchorConfig


def test_torchvision_style_equals_torchvision_including_p6_stride():
    feats = [torch.zeros(1, 1, 72 // s, 96 // s) for s in (4, 8, 16, 32)]
    feats.append(
        torch.zeros(1, 1, 2, 2)
    )  # P6 of a 72 x 96 input: stride 72 // 2 = 36, 96 // 2 = 48
    ours = AnchorGenerator(AnchorConfig(), (4, 8, 16, 32, 64))(feats, (72, 96))
    ref_gen = TVAnchorGenerator(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5)
    ref = ref_gen(ImageList(torch.zeros(1, 3, 72, 96), [(72, 96)]), feats)[0]
    torch.testing.assert_close(torch.cat(ours), ref)


def test_gluoncv_style_by_hand():
    # base 16, scale 2: ratio 0.5 -> ws = round(sqrt(512)) = 23, hs = round(11.5) = 12 -> 46 x 24;
    # ratio 1 -> 32 x 32; ratio 2 -> ws = round(sqrt(128)) = 11, hs = 22 -> 22 x 44; centre 7.5 and
    # x2 - x1 = w - 1 (GluonCV's inclusive pixels)
    cell = gluoncv_cell_anchors(16, (2,), (0.5, 1.0, 2.0))
    expected = torch.tensor(
        [[-15.0, -4.0, 30.0, 19.0], [-8.0, -8.0, 23.0, 23.0], [-3.0, -14.0, 18.0, 29.0]]
    )
    torch.testing.assert_close(cell, expected)
    cfg = AnchorConfig(style="gluoncv")
    feats = [torch.zeros(1, 1, 2, 3) for _ in range(5)]
    anchors = AnchorGenerator(cfg, (4, 8, 16, 32, 64))(feats, (8, 12))
    assert [len(a) for a in anchors] == [18] * 5
    # on P4 (stride 16 = base size) GluonCV's window is the base formula: scale 8 -> 128 px square
    # centred on 7.5; location (row 1, col 2) is shifted by (2 * 16, 1 * 16), location-major order
    square = torch.tensor([7.5 - 63.5, 7.5 - 63.5, 7.5 + 63.5, 7.5 + 63.5])
    torch.testing.assert_close(anchors[2][1], square)
    shift = torch.tensor([32.0, 16.0, 32.0, 16.0])
    torch.testing.assert_close(anchors[2][(1 * 3 + 2) * 3 + 1], square + shift)


def test_anchor_cache_is_reused_and_bounded():
    from rcnn.models import anchors as anchors_module

    generator = AnchorGenerator(AnchorConfig(), (4, 8, 16, 32, 64))
    feats = [torch.zeros(1, 1, 8 // s, 8 // s) for s in (1, 2, 4, 8)] + [torch.zeros(1, 1, 1, 1)]
    first = generator(feats, (32, 32))
    assert all(a is b for a, b in zip(first, generator(feats, (32, 32)), strict=True))
    for size in range(1, anchors_module.CACHE_SIZE + 20):
        generator([torch.zeros(1, 1, size, size)], (4 * size, 4 * size))
    assert len(generator._cache) <= anchors_module.CACHE_SIZE
