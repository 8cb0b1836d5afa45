"""The shapes dataset: byte-identical per seed, exact masks, the SPEC's difficulty settings."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_util

from rcnn.data import build_dataset, make_shapes
from rcnn.errors import DatasetError


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_shapes_are_byte_identical_for_a_seed(tmp_path):
    first = make_shapes(str(tmp_path / "a"), seed=3, num_train=12, num_val=4)
    second = make_shapes(str(tmp_path / "b"), seed=3, num_train=12, num_val=4)
    other = make_shapes(str(tmp_path / "c"), seed=4, num_train=12, num_val=4)
    digest = _digest(Path(first["root"]))
    assert len(digest) == 12 + 4 + 2 + 1  # images, two jsons, the settings file
    assert digest == _digest(Path(second["root"]))
    assert digest != _digest(Path(other["root"]))
    # val is drawn from its own stream, not a copy of training images
    train_png = (Path(first["root"]) / "train" / "000001.png").read_bytes()
    assert train_png != (Path(first["root"]) / "val" / "000001.png").read_bytes()


def test_shapes_masks_are_the_visible_pixels(tmp_path):
    paths = make_shapes(str(tmp_path / "s"), seed=0, num_train=30, num_val=2, image_size=128)
    data = json.loads(Path(paths["train"]).read_text())
    assert [c["name"] for c in data["categories"]] == ["square", "circle", "triangle"]
    per_image: dict[int, list] = {}
    for ann in data["annotations"]:
        per_image.setdefault(ann["image_id"], []).append(ann)
    assert all(1 <= len(v) <= 4 for v in per_image.values()) and len(per_image) == 30
    assert any(len(v) >= 3 for v in per_image.values())
    for image in data["images"][:10]:
        pixels = np.asarray(Image.open(Path(paths["root"]) / "train" / image["file_name"]))
        assert pixels.shape == (128, 128, 3)
        masks = [mask_util.decode(a["segmentation"]).astype(bool) for a in per_image[image["id"]]]
        assert sum(m.astype(int) for m in masks).max() <= 1  # visible parts do not overlap
        background = ~np.any(masks, axis=0)
        for mask, ann in zip(masks, per_image[image["id"]], strict=True):
            colours = np.unique(pixels[mask].reshape(-1, 3), axis=0)
            assert len(colours) == 1  # one flat colour: the mask is exactly the object's pixels
            if background.any():
                gap = np.abs(colours[0].astype(int) - pixels[background][0].astype(int))
                assert np.linalg.norm(gap) >= 120
            _, _, w, h = ann["bbox"]
            assert 0.15 * 128 * 0.4 <= max(w, h) <= 0.5 * 128 + 2
            assert mask_util.area(ann["segmentation"]) == ann["area"] == mask.sum()


def test_shapes_spec_builds_through_the_coco_reader(tmp_path):
    options = {"seed": 1, "num_train": 6, "num_val": 3}
    train = build_dataset("shapes", "train", data_root=str(tmp_path / "sh"), **options)
    val = build_dataset("shapes", "val", data_root=str(tmp_path / "sh"), **options)
    assert (len(train), len(val)) == (6, 3) and train.has_masks
    image, targets = train[0]
    assert image.shape == (3, 128, 128) and len(targets) >= 1
    assert train.class_names == ["square", "circle", "triangle"]
    assert train.label_to_category_id == [1, 2, 3]


def test_transformed_masks_still_cover_their_objects(tmp_path):
    from rcnn.data import TrainTransform
    from rcnn.data import masks as mask_ops

    options = {"seed": 2, "num_train": 8, "num_val": 1}
    raw = build_dataset("shapes", "train", data_root=str(tmp_path), **options)
    moved = build_dataset("shapes", "train", data_root=str(tmp_path), **options,
                          transform=TrainTransform((64, 96), 200, flip_prob=0.5))  # fmt: skip
    flips = set()
    for index in range(len(raw)):
        original, original_targets = raw[index]
        image, targets = moved[(index, 100 + index)]
        flips.add(targets.flipped)
        pixels = image.permute(1, 2, 0).numpy().astype(int)
        for k, mask in enumerate(targets.masks):
            inside = mask_ops.to_bitmap(mask, *targets.image_size).astype(bool)
            before = mask_ops.to_bitmap(original_targets.masks[k], 128, 128).astype(bool)
            colour = original.permute(1, 2, 0).numpy()[before][0].astype(int)
            close = np.abs(pixels[inside] - colour).max(axis=1) <= 40
            assert close.mean() > 0.85  # a mis-flipped or mis-scaled mask would miss its object
            x1, y1, x2, y2 = targets.boxes[k].tolist()
            ys, xs = np.nonzero(inside)
            assert abs(xs.min() - x1) <= 1.5 and abs(xs.max() + 1 - x2) <= 1.5
            assert abs(ys.min() - y1) <= 1.5 and abs(ys.max() + 1 - y2) <= 1.5
    assert flips == {True, False}


def test_shapes_never_overwrite_a_foreign_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="not a shapes dataset"):
        make_shapes(str(tmp_path), num_train=1, num_val=1)
    assert (tmp_path / "mine.txt").read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]
    (tmp_path / "empty").mkdir()
    assert Path(make_shapes(str(tmp_path / "empty"), num_train=1, num_val=1)["train"]).is_file()


def test_a_shapes_folder_made_with_other_settings_is_not_reused_silently(tmp_path):
    made = make_shapes(str(tmp_path / "s"), num_train=2, num_val=3, image_size=64)
    assert make_shapes(str(tmp_path / "s"), num_train=2, num_val=3, image_size=64) == made
    with pytest.raises(DatasetError, match=r"num_val 3 \(asked 5\)"):
        make_shapes(str(tmp_path / "s"), num_train=2, num_val=5, image_size=64)
    with pytest.raises(DatasetError, match=r"seed 0 \(asked 1\)"):
        make_shapes(str(tmp_path / "s"), seed=1, num_train=2, num_val=3, image_size=64)
    # a folder made before the settings file existed: checked on its counts and image size
    (tmp_path / "s" / "shapes.json").unlink()
    with pytest.raises(DatasetError, match=r"image_size 64 \(asked 128\)"):
        make_shapes(str(tmp_path / "s"), num_train=2, num_val=3, image_size=128)
    assert make_shapes(str(tmp_path / "s"), seed=1, num_train=2, num_val=3, image_size=64) == made
