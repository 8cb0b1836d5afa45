"""Reading COCO instances json (the 2017 layout or any custom file in that format).

Repairs and drops (each reported as a ``Problem``): boxes clipped to the image, zero-area / NaN /
malformed boxes dropped, polygons with fewer than 3 points dropped (the instance too when none is
left), unknown category or image ids dropped, duplicate annotation ids kept and reported, the
``area`` field recomputed from the mask (pycocotools) and a mismatch reported, an image ``width`` /
``height`` that disagrees with the file resolved by ``records.size_for_coordinates`` (the file's
size when every coordinate fits it, else a rescale from the stated size) and reported. Crowd
annotations (``iscrowd=1``) are kept as ignore regions. Category ids map to contiguous labels in id
order.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from typing import Any

import numpy as np

from rcnn.data import masks as mask_ops
from rcnn.data.images import UnreadableImageError, file_size_if_different, image_size
from rcnn.data.records import (
    Instance,
    ParsedDataset,
    Problem,
    add_record,
    check_box,
    holdout_split,
    make_record,
    outside_root_problem,
    outside_roots,
    size_for_coordinates,
)
from rcnn.errors import DatasetError
from rcnn.jsonfile import load_json_file

# Relative difference above which the json's ``area`` is reported wrong: the tolerance evaluation
# applies before recomputing (rcnn.evaluation.coco_gt.AREA_TOLERANCE), so that genuine COCO areas
# (computed by COCO's own tools, a few percent from pycocotools' rasterisation) are not noise.
AREA_TOLERANCE = 0.05


def read_json(path: str) -> dict[str, Any]:
    """Load a COCO json and check its top-level layout."""
    data = load_json_file(path, "annotation file", DatasetError)
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object with images/annotations/categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"{path}: missing or malformed '{key}' list (COCO instances format)")
    return data


def image_dir_candidates(json_path: str, split: str | None) -> list[str]:
    """Folders searched for a json's images: beside it, ``images/``, ``../images``,
    ``../<split>2017``, ``../<split>``, ``../images/<split>2017``, ``../images/<split>`` (COCO's
    own download layout; split from the file name, then the ``split`` hint)."""
    here = os.path.dirname(os.path.abspath(json_path))
    candidates = [here, os.path.join(here, "images"), os.path.join(here, "..", "images")]
    stem = os.path.basename(json_path).lower()
    splits = [name for name in ("train", "val", "test") if name in stem]
    splits += [split] if split and split not in splits else []
    for name in splits:
        for parent in (os.path.join(here, ".."), os.path.join(here, "..", "images")):
            candidates += [os.path.join(parent, f"{name}2017"), os.path.join(parent, name)]
    return [os.path.normpath(path) for path in candidates]


def resolve_image_dir(json_path: str, file_names: list[str], split: str | None) -> str:
    """The candidate folder holding the most of the first 20 ``file_names``.

    Raises:
        DatasetError: none of the candidates holds any of them (names the paths tried).
    """
    candidates = image_dir_candidates(json_path, split)
    sample = file_names[:20]
    hits = [sum(os.path.isfile(os.path.join(d, n)) for n in sample) for d in candidates]
    if not sample:
        return candidates[0]
    if max(hits) == 0:
        tried = ", ".join(os.path.join(d, sample[0]) for d in candidates)
        raise DatasetError(f"{json_path}: image '{sample[0]}' not found; tried {tried}")
    return candidates[int(np.argmax(hits))]


def _categories(data: dict, path: str, problems: list[Problem]) -> tuple[list[str], list[int]]:
    names: dict[int, str] = {}
    for category in data["categories"]:
        cat_id = category.get("id")
        if not isinstance(cat_id, int) or cat_id in names:
            kind = "duplicate_id" if cat_id in names else "bad_category"
            problems.append(Problem(path, None, kind, f"category {category!r} skipped"))
            continue
        names[cat_id] = str(category.get("name", cat_id))
    if not names:
        raise DatasetError(f"{path}: no categories")
    ids = sorted(names)
    first: dict[str, int] = {}
    for cat_id in ids:  # declared with their own ids, so kept apart, but never silently
        other = first.setdefault(names[cat_id].lower(), cat_id)
        if other != cat_id:
            how = "have the same name" if names[other] == names[cat_id] else "differ only by case"
            message = (
                f"categories {names[other]!r} (id {other}) and {names[cat_id]!r} (id {cat_id}) "
                f"{how}: kept as two classes, as the json declares them"
            )
            problems.append(Problem(path, None, "class_name_case", message))
    return [names[i] for i in ids], ids


def _positive_int(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and math.isfinite(value)
        and value >= 1
        and value == int(value)
    )


def dataset_root(json_path: str) -> str:
    """The folder of a COCO dataset: the json's, or its parent for ``annotations/*.json``."""
    here = os.path.dirname(os.path.abspath(json_path))
    return os.path.dirname(here) if os.path.basename(here).lower() == "annotations" else here


def _image_entries(
    data: dict, path: str, image_dir: str, problems: list[Problem]
) -> dict[int, dict[str, Any]]:
    entries: dict[int, dict[str, Any]] = {}
    roots = [image_dir, dataset_root(path)]
    for image in data["images"]:
        image = image if isinstance(image, dict) else {"entry": image}
        image_id, name = image.get("id"), image.get("file_name")
        if not isinstance(image_id, int) or not isinstance(name, str):
            problems.append(Problem(path, None, "bad_image", f"image entry {image!r} skipped"))
            continue
        if image_id in entries:
            message = f"image id {image_id} ({name}) appears twice: the second entry is skipped"
            problems.append(Problem(path, None, "duplicate_id", message))
            continue
        full = os.path.join(image_dir, name)
        if outside_roots(full, roots):
            problems.append(outside_root_problem(path, name, roots))
            continue
        size = (image.get("height"), image.get("width"))
        file_size = None
        if all(_positive_int(v) for v in size):
            size = (int(size[0]), int(size[1]))
            file_size = file_size_if_different(full, size)
        else:
            try:
                size = image_size(full)
            except (DatasetError, UnreadableImageError):
                size = (0, 0)  # reported as missing/unreadable with the image checks
            problems.append(
                Problem(path, None, "bad_image", f"{name}: width/height read from file")
            )
        entries[image_id] = {"path": full, "file_name": name, "size": size, "file_size": file_size}
    return entries


def _mask(ann: dict, size: tuple[int, int], where: tuple, problems: list[Problem]):
    segmentation = ann.get("segmentation")
    if isinstance(segmentation, dict):
        try:
            rle = mask_ops.rle_from_coco(segmentation)
        except (KeyError, TypeError, ValueError) as error:
            problems.append(Problem(*where, "bad_mask", f"malformed RLE ({error!r}): dropped"))
            return None
        if tuple(rle["size"]) != tuple(size):
            problems.append(
                Problem(*where, "bad_mask", f"RLE size {rle['size']} != {size}: dropped")
            )
            return None
        return rle
    if isinstance(segmentation, list) and segmentation:
        polygons, dropped = mask_ops.clean_polygons(segmentation)
        if dropped:
            action = "instance dropped" if not polygons else "polygon dropped"
            message = f"{dropped} polygon(s) with fewer than 3 points or NaN: {action}"
            problems.append(Problem(*where, "degenerate_polygon", message))
        return polygons or None
    problems.append(Problem(*where, "bad_mask", "no segmentation in a mask dataset: dropped"))
    return None


def _box(ann: dict, mask, size: tuple[int, int], where: tuple, problems: list[Problem]):
    bbox = ann.get("bbox")
    if bbox is None and mask is not None:
        return check_box(mask_ops.mask_box(mask, *size), size, where, problems)
    if isinstance(bbox, (list, tuple)) and len(bbox) == 4:
        try:
            x, y, w, h = (float(v) for v in bbox)
            bbox = [x, y, x + w, y + h]
        except (TypeError, ValueError):
            pass
    return check_box(bbox, size, where, problems)


def _report_area(ann: dict, area: float, where: tuple, problems: list[Problem]) -> None:
    stated = ann.get("area")
    if isinstance(stated, (int, float)) and abs(stated - area) > AREA_TOLERANCE * max(area, 1.0):
        message = f"area {stated:.1f} in the json, {area:.1f} computed from the mask: recomputed"
        problems.append(Problem(*where, "area_mismatch", message))


def _area(mask, box: np.ndarray, size: tuple[int, int], exact: bool) -> float:
    """Pixels covered: pycocotools' rasterised area when ``exact`` (or for RLE, which is cheap),
    else the polygons' shoelace area (fast; rasterising every COCO polygon takes a minute)."""
    if mask is None:
        return float(np.prod(box[2:] - box[:2]))
    if exact or isinstance(mask, dict):
        return mask_ops.mask_area(mask, *size)
    return mask_ops.polygon_area(mask)


def _instance(ann: dict, ctx: dict, problems: list[Problem]) -> Instance | None:
    """Parse one annotation of an image; ``ctx`` holds ``size``, ``cat_to_label``, ``has_masks``."""
    ann_id = ann.get("id", -1)
    where = (ctx["path"], ann_id)
    label = ctx["cat_to_label"].get(ann.get("category_id"))
    if label is None:
        message = f"unknown category id {ann.get('category_id')!r}: dropped"
        problems.append(Problem(*where, "unknown_category", message))
        return None
    size = ctx["size"]
    mask = _mask(ann, size, where, problems) if ctx["has_masks"] else None
    if ctx["has_masks"] and mask is None:
        return None
    box = _box(ann, mask, size, where, problems)
    if box is None:
        return None
    area = _area(mask, box, size, ctx["exact_areas"])
    if ctx["exact_areas"]:
        _report_area(ann, area, where, problems)
    if mask is not None and area == 0:
        problems.append(Problem(*where, "empty_mask", "the mask covers no pixel: dropped"))
        return None
    if area < ctx["min_object_area"]:
        ctx["num_small"] += 1
        return None
    ignore = bool(ann.get("iscrowd", 0))
    return Instance(box, label, ignore, mask, ann_id if isinstance(ann_id, int) else -1)


def _group_annotations(
    data: dict, path: str, entries: dict, problems: list[Problem]
) -> dict[int, list[dict]]:
    by_image: dict[int, list[dict]] = defaultdict(list)
    seen_ids: set = set()
    for ann in data["annotations"]:
        ann_id = ann.get("id") if isinstance(ann, dict) else None
        if not isinstance(ann, dict) or ann.get("image_id") not in entries:
            image_id = ann.get("image_id") if isinstance(ann, dict) else None
            problems.append(
                Problem(path, ann_id, "unknown_image", f"image id {image_id!r}: dropped")
            )
            continue
        if ann_id in seen_ids:
            message = f"annotation id {ann_id} used more than once: kept, evaluation renumbers"
            problems.append(Problem(path, ann_id, "duplicate_id", message))
        seen_ids.add(ann_id)
        by_image[ann["image_id"]].append(ann)
    return by_image


def load_coco(
    path: str,
    *,
    image_dir: str | None = None,
    split: str | None = None,
    holdout: str | None = None,
    skip_empty: bool = False,
    min_object_area: float = 0.0,
    exact_areas: bool | None = None,
) -> ParsedDataset:
    """Parse a COCO instances json.

    Args:
        path: the json file.
        image_dir: the image folder; None searches ``image_dir_candidates``.
        split: ``"train"``/``"val"`` (a hint for finding ``<split>2017/``).
        holdout: ``"train"``/``"val"`` to keep only that part of ``holdout_split`` (single-file
            datasets), None for every image.
        skip_empty: leave out images with no non-ignored instance.
        min_object_area: leave out instances whose mask (or box) area is below this, in pixels.
        exact_areas: recompute every area with pycocotools and report the json's wrong ones
            (``rcnn check`` does); None: only when ``min_object_area > 0``.
    """
    data = read_json(path)
    problems: list[Problem] = []
    class_names, category_ids = _categories(data, path, problems)
    names = [im.get("file_name") for im in data["images"] if isinstance(im, dict)]
    if image_dir is None:
        image_dir = resolve_image_dir(path, [n for n in names if isinstance(n, str)], split)
    entries = _image_entries(data, path, image_dir, problems)
    by_image = _group_annotations(data, path, entries, problems)
    has_masks = any(isinstance(a, dict) and a.get("segmentation") for a in data["annotations"])
    ctx = {
        "path": path,
        "cat_to_label": {cat: label for label, cat in enumerate(category_ids)},
        "has_masks": has_masks,
        "min_object_area": min_object_area,
        "exact_areas": min_object_area > 0 if exact_areas is None else exact_areas,
        "num_small": 0,
    }
    keep = holdout_split(list(entries), holdout) if holdout else set(entries)
    parsed = ParsedDataset(path, [], class_names, category_ids, "coco", has_masks, problems)
    for image_id, entry in entries.items():
        if image_id not in keep:
            continue
        record = _record(image_id, entry, by_image.get(image_id, []), ctx, problems)
        add_record(parsed, record, skip_empty)
    parsed.num_small = ctx["num_small"]
    return parsed


def _extent(anns: list[dict]) -> tuple[float, float]:
    """``(max y, max x)`` over the boxes (XYWH) and polygons of an image's annotations."""
    ys, xs = [0.0], [0.0]
    for ann in anns:
        bbox, segmentation = ann.get("bbox"), ann.get("segmentation")
        try:
            if isinstance(bbox, (list, tuple)) and len(bbox) == 4:
                xs.append(float(bbox[0]) + float(bbox[2]))
                ys.append(float(bbox[1]) + float(bbox[3]))
            for polygon in segmentation if isinstance(segmentation, list) else []:
                xs += [float(v) for v in polygon[0::2]]
                ys += [float(v) for v in polygon[1::2]]
        except (TypeError, ValueError):
            continue  # malformed: reported by the box / mask checks
    finite = [(y, x) for y, x in ((max(ys), max(xs)),) if math.isfinite(y) and math.isfinite(x)]
    return finite[0] if finite else (0.0, 0.0)


def _record(image_id: int, entry: dict, anns: list[dict], ctx: dict, problems: list[Problem]):
    where = (entry["path"], None)
    entry["size"] = size_for_coordinates(
        entry["size"], entry["file_size"], _extent(anns), where, problems
    )
    ctx["size"] = entry["size"]
    instances = [_instance(ann, ctx, problems) for ann in anns]
    return make_record(
        entry["path"],
        image_id,
        entry["size"],
        [inst for inst in instances if inst is not None],
        has_masks=ctx["has_masks"],
        file_name=entry["file_name"],
    )
