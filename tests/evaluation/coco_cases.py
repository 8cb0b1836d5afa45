"""A small COCO ground truth and a detections file with every case COCOeval distinguishes.

Three images, categories with sparse ids (3, 7, 9; 9 has no instances), polygons of small, medium
and large area, a crowd region as RLE, annotation ids starting at 0 and some wrong areas (the
quirks of balloon's json). Coordinates are multiples of 0.25 so that they survive float32.
"""

from __future__ import annotations

import copy

import numpy as np
from pycocotools import mask as mask_util

IMAGES = [
    {"id": 10, "height": 80, "width": 100, "file_name": "a.png"},
    {"id": 11, "height": 90, "width": 120, "file_name": "b.png"},
    {"id": 12, "height": 64, "width": 64, "file_name": "c.png"},
]
CATEGORIES = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}, {"id": 9, "name": "bird"}]


def _rect(x1, y1, x2, y2):
    return [[x1, y1, x2, y1, x2, y2, x1, y2]]


def _triangle(x1, y1, x2, y2):
    return [[x1, y2, (x1 + x2) / 2, y1, x2, y2]]


# (image id, category id, polygon, iscrowd)
INSTANCES = [
    (10, 3, _rect(10, 10, 60, 50), 0),  # medium
    (10, 7, _triangle(60, 5, 95, 40), 0),  # medium
    (10, 3, _rect(2, 60, 20, 75), 0),  # small
    (11, 7, _rect(5, 2, 115, 88), 0),  # large
    (11, 3, _triangle(20, 20, 50, 60), 0),
    (12, 3, _rect(4, 4, 30, 30), 0),
    (12, 7, _rect(40, 40, 60, 62), 0),  # small
    (12, 3, None, 1),  # crowd (RLE)
]


def _rle_json(mask: np.ndarray) -> dict:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def _annotation(index, image_id, category_id, polygon, crowd):
    image = next(i for i in IMAGES if i["id"] == image_id)
    h, w = image["height"], image["width"]
    if crowd:
        mask = np.zeros((h, w), dtype=np.uint8)
        mask[34:60, 2:36] = 1
        segmentation = _rle_json(mask)
        rle = segmentation
    else:
        segmentation = polygon
        rle = mask_util.merge(mask_util.frPyObjects(polygon, h, w))
    x, y, bw, bh = (float(v) for v in mask_util.toBbox(rle))
    return {
        "id": index + 1,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": segmentation,
        "area": float(mask_util.area(rle)),
        "bbox": [x, y, bw, bh],
        "iscrowd": crowd,
    }


def reference_gt() -> dict:
    """The ground truth as pycocotools wants it: ids from 1, areas from the masks."""
    annotations = [_annotation(i, *inst) for i, inst in enumerate(INSTANCES)]
    return copy.deepcopy({"images": IMAGES, "annotations": annotations, "categories": CATEGORIES})


def quirky_gt() -> dict:
    """The same ground truth with annotation ids from 0 and wrong or missing areas."""
    data = copy.deepcopy(reference_gt())
    for ann in data["annotations"]:
        ann["id"] -= 1
    data["annotations"][0]["area"] = 1.0
    data["annotations"][3]["area"] = 0.0
    del data["annotations"][5]["area"]
    return data


def make_results(seed: int = 0) -> list[dict]:
    """Detections near every instance (jittered, every 5th as "dog") plus background ones,
    each with a box and an RLE mask (the rasterised box)."""
    rng = np.random.default_rng(seed)
    sizes = {i["id"]: (i["height"], i["width"]) for i in IMAGES}
    results = []
    for k, ann in enumerate(reference_gt()["annotations"]):
        for j in range(2):
            box = np.array(ann["bbox"])
            jitter = np.round(rng.uniform(-4, 4, size=4) * 4) / 4
            category = 7 if (2 * k + j) % 5 == 4 else ann["category_id"]
            results.append(_result(ann["image_id"], category, box + jitter, rng, sizes))
    for image_id in sizes:
        for _ in range(3):
            box = np.round(rng.uniform([0, 0, 5, 5], [40, 40, 30, 30]) * 4) / 4
            results.append(_result(image_id, int(rng.choice([3, 7])), box, rng, sizes))
    return results


def _result(image_id, category_id, box, rng, sizes):
    h, w = sizes[image_id]
    x, y, bw, bh = (float(v) for v in box)
    bw, bh = max(bw, 1.0), max(bh, 1.0)
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[max(int(y), 0) : int(y + bh), max(int(x), 0) : int(x + bw)] = 1
    return {
        "image_id": image_id,
        "category_id": category_id,
        "bbox": [x, y, bw, bh],
        "score": float(np.round(rng.uniform(0.05, 1.0), 4)),
        "segmentation": _rle_json(mask),
    }
