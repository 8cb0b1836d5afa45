"""Mask geometry and transforms: exact flips, torchvision-equal resizes, rasterisation."""

from __future__ import annotations

import numpy as np
import torch
from pycocotools import mask as mask_util
from torchvision.models.detection.transform import _resize_image_and_masks, resize_boxes

from rcnn.data import TrainTransform, ValTransform
from rcnn.data import masks as mask_ops
from rcnn.data.transforms import hflip, resize, resized_size
from rcnn.structures import Targets

H, W = 37, 53
POLYGON = np.array([3.0, 4.0, 40.5, 6.0, 30.0, 30.25, 8.0, 25.0])


def _targets(masks):
    boxes = torch.tensor([[3.0, 4.0, 40.5, 30.25], [10.0, 5.0, 20.0, 15.0]])
    return Targets(
        boxes=boxes,
        labels=torch.tensor([0, 1]),
        ignore=torch.tensor([False, True]),
        image_id=7,
        image_size=(H, W),
        orig_size=(H, W),
        masks=masks,
    )


def _rle():
    bitmap = np.zeros((H, W), np.uint8)
    bitmap[5:15, 10:20] = 1
    bitmap[12:20, 2:6] = 1
    return mask_ops.encode_bitmap(bitmap)


def test_flip_twice_is_identity():
    image = torch.randint(0, 255, (3, H, W), dtype=torch.uint8)
    targets = _targets([[POLYGON.copy()], _rle()])
    flipped_image, flipped = hflip(image, targets)
    again_image, again = hflip(flipped_image, flipped)
    assert torch.equal(again_image, image)
    torch.testing.assert_close(again.boxes, targets.boxes)
    np.testing.assert_allclose(again.masks[0][0], POLYGON)
    assert again.masks[1]["counts"] == targets.masks[1]["counts"]
    assert flipped.flipped and not again.flipped
    # one flip: x -> W - x on boxes (hand-computed) and RLE columns reversed
    torch.testing.assert_close(flipped.boxes[0], torch.tensor([W - 40.5, 4.0, W - 3.0, 30.25]))
    bitmap = mask_util.decode(targets.masks[1])
    assert np.array_equal(mask_util.decode(flipped.masks[1]), bitmap[:, ::-1])


def _border_only(got: np.ndarray, expected: np.ndarray) -> bool:
    """True when every pixel where ``got`` differs is within one pixel of ``expected``'s border."""
    edge = np.zeros(expected.shape, dtype=bool)
    padded = np.pad(expected, 1, mode="edge")
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            edge |= padded[dy : dy + expected.shape[0], dx : dx + expected.shape[1]] != expected
    return bool(edge[got != expected].all())


def test_flipped_polygon_rasterises_to_flipped_bitmap():
    flipped = mask_ops.flip_mask([POLYGON], W)
    expected = mask_ops.to_bitmap([POLYGON], H, W)[:, ::-1]
    got = mask_ops.to_bitmap(flipped, H, W)
    assert _border_only(got, expected)
    assert abs(int(got.sum()) - int(expected.sum())) < 0.1 * expected.sum()


def test_resize_matches_torchvision_generalized_rcnn_transform():
    image = torch.randint(0, 255, (3, H, W), dtype=torch.uint8)
    targets = _targets(None)
    for short, max_size in [(64, 100), (50, 60), (20, 1000)]:
        ours, moved = resize(image, targets, short, max_size)
        reference, _ = _resize_image_and_masks(image.float(), short, max_size)
        assert ours.shape == reference.shape
        assert tuple(ours.shape[1:]) == resized_size(H, W, short, max_size)
        expected = reference.round().clamp(0, 255).to(torch.uint8)
        assert torch.equal(ours, expected)
        ref_boxes = resize_boxes(targets.boxes, [H, W], list(reference.shape[1:]))
        torch.testing.assert_close(moved.boxes, ref_boxes)
        assert moved.image_size == tuple(reference.shape[1:]) and moved.orig_size == (H, W)
        assert abs(moved.scale - min(short / H, max_size / W)) < 1e-12


def test_resized_polygon_and_rle_agree_with_resized_bitmap():
    new_size = (74, 106)  # x2 on both axes
    polygon = mask_ops.resize_mask([POLYGON], (H, W), new_size)
    np.testing.assert_allclose(polygon[0][0::2], POLYGON[0::2] * 2)
    small = mask_ops.to_bitmap([POLYGON], H, W)
    expected = np.kron(small, np.ones((2, 2), np.uint8))  # the bitmap resized (nearest)
    got = mask_ops.to_bitmap(polygon, *new_size)
    assert _border_only(got, expected)
    assert abs(int(got.sum()) - int(expected.sum())) < 0.05 * expected.sum()
    rle = mask_ops.resize_mask(mask_ops.encode_bitmap(small), (H, W), new_size)
    assert np.array_equal(mask_util.decode(rle), expected)


def test_train_transform_is_seeded_and_val_keeps_scale():
    image = torch.randint(0, 255, (3, H, W), dtype=torch.uint8)
    targets = _targets([[POLYGON.copy()], _rle()])
    transform = TrainTransform((30, 40, 50), 1000, flip_prob=0.5)
    runs = [transform(image, targets, generator=torch.Generator().manual_seed(s)) for s in range(8)]
    repeat = transform(image, targets, generator=torch.Generator().manual_seed(3))
    assert torch.equal(runs[3][0], repeat[0])
    assert {min(r[0].shape[1:]) for r in runs} <= {30, 40, 50}
    assert {r[1].flipped for r in runs} == {True, False}
    ranged = TrainTransform((30, 33), 1000, short_mode="range")
    shorts = {ranged.sample_short(torch.Generator().manual_seed(s)) for s in range(40)}
    assert shorts == {30, 31, 32, 33}
    val_image, val_targets = ValTransform((30, 74), 1000)(image, targets)
    assert val_image.shape[1:] == (74, 106) and val_targets.scale == 2.0
    for mask in val_targets.masks:
        assert mask_ops.to_bitmap(mask, 74, 106).shape == (74, 106)
