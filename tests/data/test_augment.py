"""Augmentation: boxes and masks follow the pixels exactly (flip, crop, large-scale jitter),
colour jitter leaves the geometry alone, and the options reach ``rcnn train``'s config."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rcnn.data import TrainTransform
from rcnn.data.augment import color_jitter, crop, scale_jitter
from rcnn.data.masks import encode_bitmap, to_bitmap
from rcnn.data.transforms import hflip, resize
from rcnn.structures import Targets


def _sample(height=40, width=60):
    """An image with two objects, one polygon mask and one RLE mask, painted into the pixels."""
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 255, (3, height, width), dtype=torch.uint8, generator=generator)
    bitmap = np.zeros((height, width), dtype=np.uint8)
    bitmap[20:35, 30:55] = 1
    polygon = [np.array([4.0, 3.0, 20.0, 3.0, 20.0, 15.0, 4.0, 15.0])]
    targets = Targets(
        boxes=torch.tensor([[4.0, 3.0, 20.0, 15.0], [30.0, 20.0, 55.0, 35.0]]),
        labels=torch.tensor([0, 1]),
        ignore=torch.tensor([False, True]),
        image_id=7,
        image_size=(height, width),
        orig_size=(height, width),
        masks=[polygon, encode_bitmap(bitmap)],
    )
    return image, targets


def _bitmaps(targets):
    height, width = targets.image_size
    return [to_bitmap(m, height, width) for m in targets.masks]


def test_flip_twice_is_the_identity():
    image, targets = _sample()
    again, back = hflip(*hflip(image, targets))
    assert torch.equal(again, image) and torch.equal(back.boxes, targets.boxes)
    for before, after in zip(_bitmaps(targets), _bitmaps(back), strict=True):
        assert np.array_equal(before, after)
    once = hflip(image, targets)[1]
    assert np.array_equal(_bitmaps(once)[1], _bitmaps(targets)[1][:, ::-1])


def test_crop_keeps_clips_and_drops_consistently():
    image, targets = _sample()
    full = _bitmaps(targets)
    window = (10, 5, 30, 25)  # x0, y0, width, height: cuts both objects
    out, cropped = crop(image, targets, window)
    assert torch.equal(out, image[:, 5:30, 10:40]) and cropped.image_size == (25, 30)
    assert cropped.boxes.tolist() == [[0, 0, 10, 10], [20, 15, 30, 25]]
    assert cropped.labels.tolist() == [0, 1] and cropped.ignore.tolist() == [False, True]
    for before, after in zip(full, _bitmaps(cropped), strict=True):
        assert np.array_equal(after, before[5:30, 10:40])
    # a window missing the first object drops it, its mask and its flags together
    _, right = crop(image, targets, (25, 18, 35, 22))
    assert right.labels.tolist() == [1] and right.ignore.tolist() == [True]
    assert len(right.masks) == 1 and np.array_equal(_bitmaps(right)[0], full[1][18:40, 25:60])


def test_large_scale_jitter_is_a_resize_then_a_crop():
    image, targets = _sample()
    out, jittered = scale_jitter(image, targets, (2.0, 2.0), torch.Generator().manual_seed(3))
    assert tuple(out.shape[-2:]) == (40, 60)  # never larger than before the jitter
    big, big_targets = resize(image, targets, 80, 120)
    matches = [
        (x, y)
        for y in range(41)
        for x in range(61)
        if torch.equal(big[:, y : y + 40, x : x + 60], out)
    ]
    assert len(matches) == 1
    x0, y0 = matches[0]
    expected = (big_targets.boxes - torch.tensor([x0, y0, x0, y0])).clamp(min=0)
    expected[:, 0::2] = expected[:, 0::2].clamp(max=60)
    expected[:, 1::2] = expected[:, 1::2].clamp(max=40)
    kept = (expected[:, 2] > expected[:, 0]) & (expected[:, 3] > expected[:, 1])
    assert torch.allclose(jittered.boxes, expected[kept])
    big_masks = _bitmaps(big_targets)
    for k, after in zip(kept.nonzero().flatten().tolist(), _bitmaps(jittered), strict=True):
        assert np.array_equal(after, big_masks[k][y0 : y0 + 40, x0 : x0 + 60])
    small, _ = scale_jitter(image, targets, (0.5, 0.5))
    assert tuple(small.shape[-2:]) == (20, 30)  # zoomed out, nothing cut


def test_color_jitter_changes_pixels_only_and_is_seeded():
    image, targets = _sample()
    assert torch.equal(color_jitter(image, 0.0), image)
    first = color_jitter(image, 0.4, torch.Generator().manual_seed(1))
    second = color_jitter(image, 0.4, torch.Generator().manual_seed(1))
    assert torch.equal(first, second) and not torch.equal(first, image)
    transform = TrainTransform(40, 100, flip_prob=0.0, color_jitter=0.4)
    out, same = transform(image, targets, generator=torch.Generator().manual_seed(1))
    assert out.shape == image.shape and torch.equal(same.boxes, targets.boxes)


def test_jitters_off_draw_what_resize_and_flip_drew():
    image, targets = _sample()
    plain = TrainTransform((20, 40), 100, flip_prob=0.5)
    for seed in range(6):
        out, moved = plain(image, targets, generator=torch.Generator().manual_seed(seed))
        generator = torch.Generator().manual_seed(seed)
        short = (20, 40)[int(torch.randint(2, (1,), generator=generator))]
        expected, expected_targets = resize(image, targets, short, 100)
        if float(torch.rand((), generator=generator)) < 0.5:
            expected, expected_targets = hflip(expected, expected_targets)
        assert torch.equal(out, expected) and torch.equal(moved.boxes, expected_targets.boxes)
    never = TrainTransform(40, 100, flip_prob=0.0)
    assert not any(never(image, targets)[1].flipped for _ in range(5))


def test_augmentation_flags_reach_the_config():
    from rcnn.cli import build_parser
    from rcnn.cli.train import config_from_args as resolve_config
    from rcnn.errors import UserError

    argv = ["train", "--flip-prob", "0.2", "--color-jitter", "0.3", "--scale-jitter", "0.5,1.5"]
    cfg, _ = resolve_config(build_parser().parse_args(argv))
    assert (cfg.flip_prob, cfg.color_jitter, cfg.scale_jitter) == (0.2, 0.3, [0.5, 1.5])
    with pytest.raises(UserError, match="scale_jitter"):
        resolve_config(build_parser().parse_args(["train", "--scale-jitter", "2,1"]))
