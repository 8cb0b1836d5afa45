"""COCO-API ground truth for evaluation, built from dataset records or loaded from a user's json.

Two quirks of real annotation files are handled here, in one place, so that every dataset scores the
same way:

- Annotation ids are renumbered from 1. ``COCOeval`` stores the id of the matched ground truth per
  detection and uses 0 to mean "unmatched", so a ground truth with id 0 (balloon's json starts at 0)
  would silently count as never matched. Only the internal copy is renumbered; results refer to
  images and categories, never to annotation ids, so nothing a user sees changes.
- Areas decide COCO's small / medium / large ranges. They are computed from the mask
  (``pycocotools.mask.area``), or from the box for box-only data. Where the source json states an
  ``area`` that agrees with that within 5%, the stated one is kept: COCO's own areas are polygon
  areas, slightly different from pixel counts, and the official numbers use them. A missing, zero
  or wrong area (balloon's json) is replaced, and the repairs of a user's json are counted in a
  log line.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from rcnn.errors import UserError
from rcnn.jsonfile import load_json_file
from rcnn.structures import InstanceMask, Record, is_rle

logger = logging.getLogger(__name__)

AREA_TOLERANCE = 0.05


def quiet_coco(dataset: dict[str, Any]) -> COCO:
    """A ``COCO`` object over an in-memory dataset dict, without pycocotools' prints."""
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def mask_to_rle(mask: InstanceMask, height: int, width: int) -> dict[str, Any]:
    """One instance mask (polygons or RLE, compressed or not) as a compressed COCO RLE."""
    if is_rle(mask):
        if isinstance(mask["counts"], list):
            return mask_util.frPyObjects(mask, height, width)
        return mask
    polygons = [np.asarray(p, dtype=np.float64).reshape(-1).tolist() for p in mask]
    return mask_util.merge(mask_util.frPyObjects(polygons, height, width))


def rle_to_json(rle: dict[str, Any]) -> dict[str, Any]:
    """A compressed RLE with ``counts`` as ``str`` so that it can be written to json."""
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": counts}


def _segmentation_json(mask: InstanceMask, height: int, width: int) -> Any:
    if is_rle(mask):
        return rle_to_json(mask_to_rle(mask, height, width))
    return [np.asarray(p, dtype=np.float64).reshape(-1).tolist() for p in mask]


def _close(stated: Any, true_area: float) -> bool:
    """Whether a stated area agrees with the computed one (within ``AREA_TOLERANCE``)."""
    if not isinstance(stated, (int, float)) or isinstance(stated, bool):
        return False
    return abs(stated - true_area) <= AREA_TOLERANCE * max(true_area, 1.0)


def _record_annotations(
    record: Record, label_to_category_id: list[int], next_id: int, stated_areas: dict
) -> list:
    """The COCO annotations of one record, ids from ``next_id`` on."""
    annotations = []
    for i in range(len(record)):
        x1, y1, x2, y2 = (float(v) for v in record.boxes[i])
        ann = {
            "id": next_id + i,
            "image_id": record.image_id,
            "category_id": int(label_to_category_id[int(record.labels[i])]),
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "iscrowd": int(bool(record.ignore[i])),
            "area": max(x2 - x1, 0.0) * max(y2 - y1, 0.0),
        }
        if record.masks is not None:
            mask = record.masks[i]
            rle = mask_to_rle(mask, record.height, record.width)
            ann["area"] = float(mask_util.area(rle))
            ann["segmentation"] = _segmentation_json(mask, record.height, record.width)
        if i < len(record.annotation_ids):
            stated = stated_areas.get(record.annotation_ids[i])
            ann["area"] = stated if _close(stated, ann["area"]) else ann["area"]
        annotations.append(ann)
    return annotations


def coco_from_records(
    records: list[Record],
    class_names: list[str],
    label_to_category_id: list[int],
    *,
    stated_areas: dict[int, float] | None = None,
) -> COCO:
    """Ground truth for ``COCOeval`` from dataset records.

    Args:
        records: the dataset's records; ``ignore`` becomes ``iscrowd=1``.
        class_names: one name per label.
        label_to_category_id: label -> the category id written in results files.
        stated_areas: the source json's ``area`` per annotation id (``Record.annotation_ids``),
            kept where it agrees with the mask's (module docstring).

    Returns:
        A ``COCO`` object whose annotation ids run from 1 and whose areas come from the masks
        (or boxes).
    """
    if len(class_names) != len(label_to_category_id):
        raise ValueError(
            f"{len(class_names)} class names but {len(label_to_category_id)} category ids"
        )
    images, annotations = [], []
    for record in records:
        images.append(
            {
                "id": record.image_id,
                "height": record.height,
                "width": record.width,
                "file_name": record.file_name,
            }
        )
        annotations += _record_annotations(
            record, label_to_category_id, len(annotations) + 1, stated_areas or {}
        )
    categories = [
        {"id": int(cid), "name": name}
        for name, cid in zip(class_names, label_to_category_id, strict=True)
    ]
    return quiet_coco({"images": images, "annotations": annotations, "categories": categories})


def _require(data: Any, key: str, kind: type, path: str) -> list:
    if not isinstance(data, dict) or not isinstance(data.get(key), kind):
        raise UserError(f"{path}: not a COCO annotation file (no '{key}' {kind.__name__})")
    return data[key]


def _fix_area(ann: dict, size: tuple[int, int]) -> bool:
    """Set ``ann["area"]`` from its segmentation (or box); True when the stated area was wrong."""
    segmentation = ann.get("segmentation")
    if segmentation:
        true_area = float(mask_util.area(mask_to_rle(segmentation, *size)))
    else:
        true_area = float(ann["bbox"][2]) * float(ann["bbox"][3])
    if _close(ann.get("area"), true_area):
        return False
    ann["area"] = true_area
    return True


def _check_annotation(ann: Any, image_sizes: dict, category_ids: set, path: str) -> None:
    if not isinstance(ann, dict):
        raise UserError(f"{path}: an annotation is not an object: {ann!r:.80}")
    where = f"{path}: annotation id {ann.get('id')}"
    if ann.get("image_id") not in image_sizes:
        raise UserError(f"{where}: unknown image_id {ann.get('image_id')!r}")
    if ann.get("category_id") not in category_ids:
        raise UserError(f"{where}: unknown category_id {ann.get('category_id')!r}")
    bbox = ann.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4):
        raise UserError(f"{where}: bbox must be [x, y, w, h], got {bbox!r:.80}")


def _image_size(image: Any, path: str) -> tuple[Any, tuple[int, int]]:
    try:
        return image["id"], (int(image["height"]), int(image["width"]))
    except (TypeError, KeyError, ValueError) as error:
        raise UserError(
            f"{path}: an image entry lacks a valid id / height / width: {image!r:.120}"
        ) from error


def load_coco_json(path: str | Path) -> COCO:
    """Load a user's COCO instances json for evaluation, repaired as the module docstring says.

    Raises:
        UserError: the file is missing, is not json, or is not a COCO instances file.
    """
    path = str(path)
    data = load_json_file(path, "annotation file")
    images = _require(data, "images", list, path)
    annotations = _require(data, "annotations", list, path)
    categories = _require(data, "categories", list, path)
    image_sizes = dict(_image_size(img, path) for img in images)
    category_ids = {cat["id"] for cat in categories}
    repaired = 0
    for new_id, ann in enumerate(annotations, start=1):
        _check_annotation(ann, image_sizes, category_ids, path)
        ann.setdefault("iscrowd", 0)
        repaired += _fix_area(ann, image_sizes[ann["image_id"]])
        ann["id"] = new_id
    if repaired:
        logger.warning("%s: recomputed %d wrong or missing annotation areas", path, repaired)
    return quiet_coco(data)


def stated_areas(json_path: str | Path) -> dict[int, float]:
    """``{annotation id: area}`` as a COCO json states them ({} when it cannot be read)."""
    try:
        with open(json_path, encoding="utf-8") as f:
            annotations = json.load(f).get("annotations", [])
        return {a["id"]: a["area"] for a in annotations if "area" in a and "id" in a}
    except (OSError, ValueError, AttributeError, TypeError, KeyError):
        logger.warning("%s: cannot read the stated areas; using the masks' areas", json_path)
        return {}


def records_from_coco(coco: COCO) -> tuple[list[Record], list[str], list[int]]:
    """Records (boxes, labels, crowd flags; no masks) of a COCO object, for the analysis plots.

    Returns:
        The records, the class names and the label -> category id list (categories sorted by id).
    """
    cats = sorted(coco.dataset["categories"], key=lambda c: c["id"])
    cat_to_label = {c["id"]: i for i, c in enumerate(cats)}
    records = []
    for img in coco.dataset["images"]:
        anns = coco.imgToAnns.get(img["id"], [])
        xywh = np.array([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        records.append(
            Record(
                image_path=str(img.get("file_name", "")),
                image_id=img["id"],
                height=int(img["height"]),
                width=int(img["width"]),
                boxes=boxes,
                labels=np.array([cat_to_label[a["category_id"]] for a in anns], dtype=np.int64),
                ignore=np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool),
                file_name=str(img.get("file_name", "")),
            )
        )
    return records, [str(c.get("name", c["id"])) for c in cats], [c["id"] for c in cats]
