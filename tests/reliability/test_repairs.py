"""The repairs the reliability cases count are also right: exact coordinates, pixels and labels."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from reliability_files import HEIGHT, WIDTH, coco_dataset, save, voc_dataset

from rcnn.data import build_dataset
from rcnn.data.coco import load_coco
from rcnn.data.images import load_image
from rcnn.data.records import Problem
from rcnn.data.voc import load_voc_folder, merge_case_variants


def _first(root, **image_changes):
    data = coco_dataset(root)
    data["images"][0].update(image_changes)
    save(root, data)
    dataset = build_dataset(str(root / "ann.json"), "all", skip_empty=False)
    index = [r.image_id for r in dataset.records].index(1)
    return dataset.records[index], dataset[index]


def test_halved_width_height_trusts_the_file(tmp_path):
    record, (image, targets) = _first(tmp_path, width=WIDTH // 2, height=HEIGHT // 2)
    assert (record.height, record.width) == (HEIGHT, WIDTH)
    assert record.boxes.tolist() == [[20.0, 10.0, 44.0, 30.0]]  # neither clipped nor moved
    assert image.shape == (3, HEIGHT, WIDTH)
    assert targets.boxes.tolist() == [[20.0, 10.0, 44.0, 30.0]]
    assert targets.masks[0][0].tolist() == [20, 10, 44, 10, 44, 30, 20, 30]


def test_swapped_width_height_trusts_the_file(tmp_path):
    record, (_, targets) = _first(tmp_path, width=HEIGHT, height=WIDTH)
    assert (record.height, record.width) == (HEIGHT, WIDTH)
    assert targets.boxes.tolist() == [[20.0, 10.0, 44.0, 30.0]]


def test_coordinates_drawn_at_the_stated_size_are_rescaled(tmp_path):
    data = coco_dataset(tmp_path)
    data["images"][0].update(width=2 * WIDTH, height=2 * HEIGHT)
    data["annotations"][0].update(
        bbox=[40, 20, 100, 90], segmentation=[[40, 20, 140, 20, 140, 110, 40, 110]]
    )
    save(tmp_path, data)
    parsed = load_coco(str(tmp_path / "ann.json"))
    [problem] = [p for p in parsed.problems if p.kind == "size_mismatch"]
    assert "reach beyond the file, rescaled" in problem.message
    dataset = build_dataset(str(tmp_path / "ann.json"), "all", skip_empty=False)
    index = [r.image_id for r in dataset.records].index(1)
    image, targets = dataset[index]
    assert image.shape == (3, HEIGHT, WIDTH)
    assert targets.boxes.tolist() == [[20.0, 10.0, 70.0, 55.0]]
    np.testing.assert_allclose(targets.masks[0][0], [20, 10, 70, 10, 70, 55, 20, 55])


def test_float_image_in_0_1_is_scaled_to_255(tmp_path):
    array = np.zeros((4, 6), np.float32)
    array[0, 0], array[1, 1], array[2, 2] = 1.0, 0.5, float("nan")
    Image.fromarray(array, mode="F").save(tmp_path / "f.tif")
    image, info = load_image(str(tmp_path / "f.tif"))
    assert image[:, 0, 0].tolist() == [255] * 3 and image[:, 1, 1].tolist() == [128] * 3
    assert int(image.sum()) == 3 * (255 + 128)  # NaN and zeros: black
    assert "values in 0..1 scaled to 0..255" in info.notes[0]
    big = np.full((4, 6), 200.0, np.float32)  # already 0..255: kept
    Image.fromarray(big, mode="F").save(tmp_path / "g.tif")
    assert torch.all(load_image(str(tmp_path / "g.tif"))[0] == 200)


def test_voc_class_names_differing_by_case_are_one_class(tmp_path):
    voc_dataset(tmp_path, ["raccoon", "Raccoon", "raccoon", "dog"])
    parsed = load_voc_folder(str(tmp_path), None)
    assert parsed.class_names == ["dog", "raccoon"]
    assert sorted(int(r.labels[0]) for r in parsed.records) == [0, 1, 1, 1]
    [problem] = [p for p in parsed.problems if p.kind == "class_name_case"]
    assert problem.file.endswith("v1.xml") and "'Raccoon' differs from 'raccoon'" in problem.message
    items = [{"xml": "a.xml", "objects": [("Dog", False, [0, 0, 1, 1])]}]
    problems: list[Problem] = []
    assert merge_case_variants(items, ("cat", "dog"), problems) == ["cat", "dog"]
    assert items[0]["objects"][0][0] == "dog" and len(problems) == 1


def test_garbage_crowd_rle_is_dropped_in_training(tmp_path):
    data = coco_dataset(tmp_path)
    data["annotations"].append(
        {"id": 50, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "iscrowd": 1,
         "segmentation": {"size": [HEIGHT, WIDTH], "counts": "###garbage###"}}
    )  # fmt: skip
    save(tmp_path, data)
    dataset = build_dataset(str(tmp_path / "ann.json"), "train")
    assert dataset.parsed.problem_counts()["bad_mask"] == 1
    for index in range(len(dataset)):
        assert 50 not in dataset.records[index].annotation_ids
    assert all(dataset.load(i) is not None for i in range(len(dataset)))
