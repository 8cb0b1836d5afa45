"""Detections in the COCO results format: conversion, loading and validation.

A results file is a json list of ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``
objects, with ``"segmentation"`` (a compressed RLE) for instance masks. Extra keys are kept.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_util

from rcnn.errors import UserError
from rcnn.evaluation.coco_gt import mask_to_rle, rle_to_json
from rcnn.jsonfile import load_json_file
from rcnn.structures import Detections

REQUIRED_KEYS = ("image_id", "category_id", "bbox", "score")


def encode_masks(masks: np.ndarray) -> list[dict[str, Any]]:
    """RLE-encode binary masks.

    Args:
        masks: bool or uint8 ``[N, H, W]``.

    Returns:
        N json-ready compressed RLEs (``counts`` as str).
    """
    if len(masks) == 0:
        return []
    fortran = np.asfortranarray(np.transpose(masks.astype(np.uint8), (1, 2, 0)))
    return [rle_to_json(rle) for rle in mask_util.encode(fortran)]


def detections_to_results(
    image_id: Any, detections: Detections, label_to_category_id: list[int]
) -> list[dict[str, Any]]:
    """One image's detections as COCO result dicts (boxes XYXY -> XYWH, labels -> category ids)."""
    detections = detections.to("cpu")
    boxes = detections.boxes.detach().float().numpy().reshape(-1, 4)
    scores = detections.scores.detach().float().numpy().reshape(-1)
    labels = detections.labels.detach().numpy().reshape(-1)
    rles = None
    if detections.masks is not None:
        rles = encode_masks(detections.masks.detach().numpy().astype(bool))
    results = []
    for i in range(len(boxes)):
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        result = {
            "image_id": image_id,
            "category_id": int(label_to_category_id[int(labels[i])]),
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "score": float(scores[i]),
        }
        if rles is not None:
            result["segmentation"] = rles[i]
        results.append(result)
    return results


def _check_entry(entry: Any, index: int, path: str) -> None:
    if not isinstance(entry, dict):
        raise UserError(f"{path}: entry {index} is not an object: {entry!r:.80}")
    missing = [key for key in REQUIRED_KEYS if key not in entry]
    if missing:
        raise UserError(
            f"{path}: entry {index} lacks {', '.join(missing)} "
            f"(expected {{image_id, category_id, bbox, score}})"
        )
    bbox = entry["bbox"]
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        raise UserError(f"{path}: entry {index}: bbox must be [x, y, w, h], got {bbox!r:.80}")
    if not all(math.isfinite(v) for v in bbox):
        raise UserError(f"{path}: entry {index}: bbox {bbox} holds NaN or infinity")
    if bbox[2] < 0 or bbox[3] < 0:
        raise UserError(
            f"{path}: entry {index}: bbox {bbox} has a negative width or height "
            "(COCO results boxes are [x, y, width, height])"
        )
    if not _is_number(entry["score"]) or not math.isfinite(entry["score"]):
        raise UserError(
            f"{path}: entry {index}: score must be a finite number, got {entry['score']!r}"
        )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def load_results(path: str | Path) -> list[dict[str, Any]]:
    """Read and validate a COCO results json.

    Raises:
        UserError: missing file, invalid json, entries without image_id / category_id /
            bbox / score, a NaN or infinite score or box, a negative box width or height (the
            first bad entry named: a file that is wrong somewhere is not scored at all).
    """
    path = str(path)
    results = load_json_file(path, "results file")
    if not isinstance(results, list):
        raise UserError(
            f"{path}: expected a json list of {{image_id, category_id, bbox, score}} objects, "
            f"got {type(results).__name__}"
        )
    for index, entry in enumerate(results):
        _check_entry(entry, index, path)
    return results


def _listed(values: Iterable[Any], limit: int = 10) -> str:
    values = sorted(values, key=str)
    text = ", ".join(repr(v) for v in values[:limit])
    return text + (f" ... ({len(values)} in all)" if len(values) > limit else "")


def check_result_ids(
    results: list[dict[str, Any]],
    image_ids: Iterable[Any],
    category_ids: Iterable[Any],
    source: str,
) -> None:
    """Raise a ``UserError`` naming the result image / category ids the ground truth lacks."""
    unknown_images = {r["image_id"] for r in results} - set(image_ids)
    if unknown_images:
        raise UserError(
            f"{source}: {len(unknown_images)} image id(s) not in the ground truth: "
            f"{_listed(unknown_images)}"
        )
    unknown_categories = {r["category_id"] for r in results} - set(category_ids)
    if unknown_categories:
        raise UserError(
            f"{source}: category id(s) not in the ground truth: {_listed(unknown_categories)} "
            f"(known: {_listed(category_ids)})"
        )


def segm_results(
    results: list[dict[str, Any]],
    image_sizes: dict[Any, tuple[int, int]],
    source: str = "results",
) -> list:
    """The results with masks, prepared for ``COCOeval(iouType="segm")``.

    Boxes are dropped so that ``loadRes`` takes each detection's area from its mask (as Detectron2
    does; with a box present pycocotools would use the box area for the size ranges), and polygon
    segmentations are converted to RLE (``loadRes`` only reads RLE).

    Raises:
        UserError: a segmentation that is not a mask of its image (garbage RLE counts, another
            size, malformed polygons), naming ``source`` and the entry.
    """
    prepared = []
    for index, result in enumerate(results):
        segmentation = result.get("segmentation")
        if not segmentation:
            continue
        entry = {k: v for k, v in result.items() if k not in ("bbox", "segmentation")}
        size = image_sizes[result["image_id"]]
        try:
            rle = mask_to_rle(segmentation, *size)
            rle = mask_util.merge([rle]) if isinstance(rle, list) else rle
        except Exception:  # pycocotools raises a bare Exception for unsupported input
            rle = None
        if not _valid_rle(rle, size):
            raise UserError(
                f"{source}: entry {index} (image {result['image_id']}): segmentation is not a mask "
                f"of its {size[1]}x{size[0]} image (a COCO RLE of that size or polygons): "
                f"{str(segmentation)[:80]}"
            )
        entry["segmentation"] = rle_to_json(rle)
        prepared.append(entry)
    return prepared


def _valid_rle(rle: Any, size: tuple[int, int]) -> bool:
    """A compressed RLE of ``size`` whose runs fit it (garbage ``counts`` decode to runs far
    past the image, and would make COCOeval's IoU loops run for minutes)."""
    if not isinstance(rle, dict) or [int(v) for v in rle.get("size", [])] != list(size):
        return False
    try:
        x, y, w, h = (float(v) for v in mask_util.toBbox(rle))
        area = float(mask_util.area(rle))
    except (TypeError, ValueError):
        return False
    height, width = size
    return area <= height * width and x + w <= width and y + h <= height


def bbox_results(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Shallow copies of the results without masks (``loadRes`` writes into the dicts it gets)."""
    return [{k: v for k, v in r.items() if k != "segmentation"} for r in results]
