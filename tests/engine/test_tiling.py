"""Tiled inference on a synthetic mosaic with known objects: small objects lost at the model's
test size are found with tiles, each object once (NMS + edge merging), masks stitched exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from rcnn.engine.tiling import TiledPredictor, tile_windows, window_starts
from rcnn.structures import Detections

TEST_SHORT = 128


class ColourDetector(nn.Module):
    """A stand-in detector with a real detector's blind spot: it resizes each input to a short
    side of 128 (nearest) and finds objects by their colour id (red channel), when at least 3x3
    of their pixels survive. Cut objects (touching the input's border) score lower."""

    class_names = ("even", "odd")
    has_mask = True

    def forward(self, images):
        return [self._detect(image) for image in images]

    def _detect(self, image):
        height, width = image.shape[-2:]
        scale = TEST_SHORT / min(height, width)
        small = F.interpolate(image[None].float(), scale_factor=scale, mode="nearest")[0, 0]
        boxes, scores, labels, masks = [], [], [], []
        for value in small.unique().tolist():
            if value == 0 or (small == value).sum() < 9:
                continue
            mask = image[0] == int(value)
            ys, xs = mask.nonzero(as_tuple=True)
            box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            cut = box[0] == 0 or box[1] == 0 or box[2] == width or box[3] == height
            boxes.append(torch.tensor(box, dtype=torch.float32))
            scores.append(0.6 if cut else 0.95)
            labels.append(int(value) % 2)
            masks.append(mask)
        if not boxes:
            return Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64),
                              torch.zeros(0, height, width, dtype=torch.bool))  # fmt: skip
        return Detections(torch.stack(boxes), torch.tensor(scores), torch.tensor(labels),
                          torch.stack(masks))  # fmt: skip


def _mosaic(height=600, width=800, side=10, step=50):
    """Small squares on a grid (colour ids 1..N) plus one big square larger than a tile."""
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    truth = []
    value = 1
    for y in range(15, height - side, step):
        for x in range(15, width - side, step):
            if 300 <= x < 560 and 200 <= y < 460:
                continue  # room for the big one
            image[0, y : y + side, x : x + side] = value
            truth.append((value, [x, y, x + side, y + side]))
            value += 1
    image[0, 210:450, 310:550] = 250  # 240 px: larger than a 128 tile
    truth.append((250, [310, 210, 550, 450]))
    return image, truth


def _recall(detections, truth):
    found = 0
    for _, box in truth:
        same = (detections.boxes == torch.tensor(box, dtype=torch.float32)).all(1)
        found += int(same.any())
    return found / len(truth)


def test_window_grid_covers_the_image_without_padding():
    assert window_starts(100, 128, 96) == [0]
    assert window_starts(300, 128, 96) == [0, 96, 172]  # the last one ends at 300
    windows = tile_windows(300, 260, 128, 0.25)
    assert len(windows) == 9 and windows[-1] == (132, 172, 260, 300)
    covered = torch.zeros(300, 260, dtype=torch.bool)
    for x0, y0, x1, y1 in windows:
        assert x1 - x0 == 128 and y1 - y0 == 128
        covered[y0:y1, x0:x1] = True
    assert covered.all()


def test_tiles_find_small_objects_once_with_stitched_masks():
    image, truth = _mosaic()
    model = ColourDetector().eval()
    plain = model([image])[0]
    assert _recall(plain, truth) == pytest.approx(1 / len(truth))  # only the big square
    tiled = TiledPredictor(model, 128, overlap=0.25, max_detections=500)([image])[0]
    assert _recall(tiled, truth) == 1.0
    assert len(tiled) == len(truth)  # no duplicates, no fragments of the big square
    for value, box in truth:
        row = int((tiled.boxes == torch.tensor(box, dtype=torch.float32)).all(1).nonzero()[0])
        expected = image[0] == value
        assert torch.equal(tiled.masks[row], expected), value
        assert tiled.labels[row] == value % 2
    assert tiled.masks.shape == (len(truth), 600, 800)


def test_without_the_whole_image_pass_the_big_object_is_fragmented():
    image, truth = _mosaic()
    tiles_only = TiledPredictor(ColourDetector(), 128, overlap=0.25, full_image=False,
                                max_detections=500)([image])[0]  # fmt: skip
    assert _recall(tiles_only, truth[:-1]) == 1.0
    big = tiles_only.labels == 0  # 250 is even; cut pieces remain as "even" boxes
    inside = (tiles_only.boxes[:, 0] >= 310) & (tiles_only.boxes[:, 2] <= 550)
    assert int((big & inside).sum()) > 1


def test_a_small_image_is_one_plain_call():
    model = ColourDetector()
    image = torch.zeros(3, 100, 120, dtype=torch.uint8)
    image[0, 10:30, 10:30] = 3
    tiled = TiledPredictor(model, 128)([image])[0]
    assert tiled.boxes.tolist() == [[10, 10, 30, 30]] and np.isclose(float(tiled.scores[0]), 0.95)
    with pytest.raises(ValueError, match="overlap"):
        TiledPredictor(model, 128, overlap=1.0)
