"""The shared sample datasets: counts equal an independent parse (plain json, ElementTree)."""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_util

from rcnn.data import build_dataset
from rcnn.data.coco import load_coco


def _coco_counts(path):
    data = json.loads(path.read_text())
    names = [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])]
    return data, len(data["images"]), len(data["annotations"]), names


@pytest.mark.parametrize("split", ["train", "val"])
def test_balloon_counts_match_json(shared_data, split):
    data, num_images, num_instances, names = _coco_counts(
        shared_data / "balloon" / "annotations" / f"custom_{split}.json"
    )
    dataset = build_dataset(str(shared_data / "balloon"), split)
    assert (num_images, num_instances) == ((61, 255) if split == "train" else (13, 50))
    assert len(dataset) == num_images
    assert sum(len(r) for r in dataset.records) == num_instances
    assert dataset.class_names == names == ["balloon"]
    assert dataset.label_to_category_id == [0]
    assert dataset.has_masks and dataset.metric == "coco"
    # source ids are kept, including the id 0 the COCO API would treat as "unmatched"
    ids = sorted(i for r in dataset.records for i in r.annotation_ids)
    assert ids == sorted(a["id"] for a in data["annotations"])


def test_balloon_areas_are_recomputed(shared_data):
    path = shared_data / "balloon" / "annotations" / "custom_train.json"
    data = json.loads(path.read_text())
    images = {im["id"]: im for im in data["images"]}
    ann = data["annotations"][0]
    image = images[ann["image_id"]]
    rle = mask_util.merge(
        mask_util.frPyObjects(ann["segmentation"], image["height"], image["width"])
    )
    true_area = float(mask_util.area(rle))
    assert abs(true_area - ann["area"]) > 1000  # the json's area is wrong (data README)
    # min_object_area uses the recomputed area: just above it drops exactly that instance
    parsed = load_coco(str(path), min_object_area=true_area + 0.5)
    areas = [
        float(mask_util.area(mask_util.merge(mask_util.frPyObjects(
            a["segmentation"], images[a["image_id"]]["height"], images[a["image_id"]]["width"]
        ))))
        for a in data["annotations"]
    ]  # fmt: skip
    assert parsed.num_small == sum(area < true_area + 0.5 for area in areas)
    kinds = parsed.problem_counts()
    # reported where the json is off by more than evaluation's 5% (254 of the 255 balloons)
    wrong = sum(abs(a["area"] - area) > 0.05 * max(area, 1.0)
                for a, area in zip(data["annotations"], areas, strict=True))  # fmt: skip
    assert kinds["area_mismatch"] == wrong == 254


def test_fruits_nuts_holdout_split(shared_data):
    data, num_images, num_instances, names = _coco_counts(
        shared_data / "fruits_nuts" / "trainval.json"
    )
    train = build_dataset(str(shared_data / "fruits_nuts"), "train")
    val = build_dataset(str(shared_data / "fruits_nuts"), "val")
    assert [r.image_id for r in val.records] == [15, 16, 17]
    assert sorted(r.image_id for r in train.records) == list(range(15))
    assert len(train) + len(val) == num_images == 18
    assert sum(len(r) for r in train.records + val.records) == num_instances == 165
    assert train.class_names == names == ["date", "fig", "hazelnut"]
    assert train.label_to_category_id == [1, 2, 3]
    per_class = np.bincount(np.concatenate([r.labels for r in train.records + val.records]))
    expected = np.bincount([a["category_id"] - 1 for a in data["annotations"]])
    assert per_class.tolist() == expected.tolist()


@pytest.mark.parametrize(
    "split,csv_name", [("train", "train_labels.csv"), ("val", "test_labels.csv")]
)
def test_raccoon_split_and_boxes(shared_data, split, csv_name):
    root = shared_data / "raccoon"
    with open(root / "splits" / csv_name, newline="") as handle:
        rows = list(csv.DictReader(handle))
    files = sorted({row["filename"] for row in rows})
    dataset = build_dataset(str(root), split)
    assert sorted(r.file_name for r in dataset.records) == files
    num_objects = sum(
        len(ET.parse(root / "annotations" / f.replace(".jpg", ".xml")).findall("object"))
        for f in files
    )
    assert sum(len(r) for r in dataset.records) == num_objects == len(rows)
    assert dataset.class_names == ["raccoon"] and dataset.metric == "voc"
    record = dataset.records[0]
    tree = ET.parse(root / "annotations" / record.file_name.replace(".jpg", ".xml"))
    box = tree.find("object/bndbox")
    expected = [float(box.find(t).text) for t in ("xmin", "ymin", "xmax", "ymax")]
    assert record.boxes[0].tolist() == [expected[0] - 1, expected[1] - 1, expected[2], expected[3]]


def test_raccoon_grayscale_images_become_rgb(shared_data):
    dataset = build_dataset(str(shared_data / "raccoon"), "train", skip_empty=False)
    gray = []
    for index, record in enumerate(dataset.records):
        with Image.open(record.image_path) as image:
            if image.mode == "L":
                gray.append(index)
    assert gray, "the train split holds grayscale images (data README)"
    image, targets = dataset[gray[0]]
    assert image.dtype == torch.uint8
    assert image.shape[0] == 3 and (image[0] == image[1]).all() and (image[1] == image[2]).all()
    assert targets.image_size == tuple(image.shape[1:])
