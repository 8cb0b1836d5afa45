"""Reading labelme folders: one json per image with ``shapes`` (polygons, rectangles, circles).

Conventions (labelme's own ``labelme2coco`` / ``labelme2voc`` examples):
- shapes of the same ``label`` with the same non-null ``group_id`` are one instance (its polygons
  merged); a shape without ``group_id`` is an instance of its own;
- ``__ignore__`` shapes are ignore regions (one per class, so that no class is penalised there);
  ``_background_`` shapes are left out;
- rectangles become 4-point polygons, circles (centre + a point on the rim) 32-point polygons;
  lines, points and other shape types carry no area: reported and dropped.
Classes: the order of ``labels.txt`` beside the jsons (labelme's ``--labels`` file) when present,
else the sorted names found. Images: ``imagePath`` relative to the json, else a file with the
json's stem in the image folder (``--images``). An ``imagePath`` that leaves the dataset folder
(``..`` past it, or an absolute path elsewhere) is refused as ``outside_root`` and the image
skipped, as COCO's ``file_name`` is, unless reads outside are allowed (``--allow-outside-root``).
Sizes: ``imageHeight``/``imageWidth``, else the file header.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from rcnn.data import masks as mask_ops
from rcnn.data.folders import files_with_suffix, images_by_stem, stem
from rcnn.data.images import UnreadableImageError, image_size
from rcnn.data.records import (
    Instance,
    ParsedDataset,
    Problem,
    add_record,
    check_box,
    make_record,
    outside_root_problem,
    outside_roots,
)
from rcnn.errors import DatasetError
from rcnn.jsonfile import load_json_file

IGNORE_LABEL = "__ignore__"
BACKGROUND_LABEL = "_background_"
CIRCLE_POINTS = 32


def is_labelme_json(path: str) -> bool:
    """Whether a json file looks like labelme's (``shapes`` near the start), without parsing it."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            head = handle.read(4096)
    except OSError:
        return False
    return '"shapes"' in head and ('"imagePath"' in head or '"version"' in head)


def labelme_jsons(folder: str) -> list[str]:
    """The labelme jsons directly in ``folder``."""
    return [p for p in files_with_suffix(folder, (".json",)) if is_labelme_json(p)]


def _polygon(shape: dict[str, Any]) -> np.ndarray | None:
    """The flat ``[x0, y0, ...]`` polygon of a shape, or None for a shape without area."""
    points = np.asarray(shape.get("points"), dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or not np.isfinite(points).all():
        return None
    kind = shape.get("shape_type") or "polygon"
    if kind == "rectangle" and len(points) == 2:
        (x1, y1), (x2, y2) = points.min(0), points.max(0)
        return np.array([x1, y1, x2, y1, x2, y2, x1, y2])
    if kind == "circle" and len(points) == 2:
        (cx, cy), (px, py) = points
        radius = math.hypot(px - cx, py - cy)
        angles = np.linspace(0, 2 * math.pi, CIRCLE_POINTS, endpoint=False)
        ring = np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], 1)
        return ring.reshape(-1)
    if kind == "polygon" and len(points) >= 3:
        return points.reshape(-1)
    return None


def _group_shapes(data: dict, path: str, problems: list[Problem]) -> list[tuple[str, list]]:
    """``[(label, polygons)]``: one entry per instance (shapes merged by ``group_id``)."""
    groups: dict[Any, tuple[str, list]] = {}
    shapes = data.get("shapes")
    if not isinstance(shapes, list):
        problems.append(Problem(path, None, "bad_annotation", "no 'shapes' list: no instances"))
        return []
    for index, shape in enumerate(shapes):
        if not isinstance(shape, dict) or not isinstance(shape.get("label"), str):
            problems.append(Problem(path, index, "bad_annotation", "shape without label: dropped"))
            continue
        label = shape["label"].strip()
        if label == BACKGROUND_LABEL:
            continue
        try:
            polygon = _polygon(shape)
        except (TypeError, ValueError):
            polygon = None
        if polygon is None:
            kind = shape.get("shape_type") or "polygon"
            message = f"{kind} shape '{label}' has no area (or bad points): dropped"
            problems.append(Problem(path, index, "degenerate_polygon", message))
            continue
        group = shape.get("group_id")
        key = (label, group) if group is not None else (label, f"shape{index}")
        groups.setdefault(key, (label, []))[1].append(polygon)
    return list(groups.values())


def _image_path(data: dict, json_path: str, ctx: dict) -> str | None:
    """The image of a labelme json: ``imagePath`` when it exists inside ``ctx["roots"]``, else
    the json's stem in ``ctx["images"]`` (the image folder); None (reported) when ``imagePath``
    leaves the roots and no image of that stem is there."""
    named = data.get("imagePath")
    candidate = None
    if isinstance(named, str) and named:  # labelme on Windows writes backslashes
        relative = named.replace("\\", "/")
        candidate = os.path.normpath(os.path.join(os.path.dirname(json_path), relative))
        if outside_roots(candidate, ctx["roots"]):
            if ctx["images"] is not None and stem(json_path) in ctx["images"]:
                return ctx["images"][stem(json_path)]
            ctx["problems"].append(outside_root_problem(json_path, named, ctx["roots"]))
            return None
        if os.path.isfile(candidate):
            return candidate
    if ctx["images"] is not None and stem(json_path) in ctx["images"]:
        return ctx["images"][stem(json_path)]
    return candidate or os.path.splitext(json_path)[0] + ".jpg"


def _size(data: dict, paths: tuple[str, str], problems: list[Problem]) -> tuple[int, int]:
    """``(H, W)`` from the json, else from the image header; ``paths = (image, json)``."""
    image_path, json_path = paths
    size = (data.get("imageHeight"), data.get("imageWidth"))
    if all(isinstance(v, int) and v > 0 for v in size):
        return int(size[0]), int(size[1])
    problems.append(Problem(json_path, None, "bad_image", "no imageHeight/Width: read from file"))
    try:
        return image_size(image_path)
    except (DatasetError, UnreadableImageError):
        return (0, 0)


def _read_one(json_path: str, ctx: dict) -> dict | None:
    problems = ctx["problems"]
    data = load_json_file(json_path, "labelme file", DatasetError)
    if not isinstance(data, dict):
        problems.append(Problem(json_path, None, "bad_annotation", "not a JSON object: skipped"))
        return None
    image_path = _image_path(data, json_path, ctx)
    if image_path is None:
        return None
    size = _size(data, (image_path, json_path), problems)
    return {"json": json_path, "image": image_path, "size": size, "groups": _group_shapes(
        data, json_path, problems)}  # fmt: skip


def _class_names(folder: str, items: list[dict]) -> list[str]:
    labels_file = os.path.join(folder, "labels.txt")
    if os.path.isfile(labels_file):
        with open(labels_file, encoding="utf-8") as handle:
            names = [line.strip() for line in handle if line.strip()]
        return [n for n in names if n not in (IGNORE_LABEL, BACKGROUND_LABEL)]
    found = {label for item in items for label, _ in item["groups"]}
    return sorted(found - {IGNORE_LABEL})


def _instances(item: dict, class_to_label: dict, problems: list[Problem]) -> list[Instance]:
    instances: list[Instance] = []
    for index, (label, polygons) in enumerate(item["groups"]):
        where = (item["json"], index)
        ignore = label == IGNORE_LABEL
        if not ignore and label not in class_to_label:
            message = f"label {label!r} is not in labels.txt: dropped"
            problems.append(Problem(*where, "unknown_category", message))
            continue
        box = mask_ops.mask_box(polygons, *item["size"]) if min(item["size"]) > 0 else None
        box = check_box(box if box is not None else [0, 0, 0, 0], item["size"], where, problems)
        if box is None:
            continue
        labels = list(class_to_label.values()) if ignore else [class_to_label[label]]
        instances += [Instance(box, k, ignore, polygons, index + 1) for k in labels]
    return instances


def load_labelme(
    folder: str,
    *,
    image_dir: str | None = None,
    classes: list[str] | None = None,
    skip_empty: bool = False,
    root: str | None = None,
) -> ParsedDataset:
    """Every labelme json in ``folder`` (not recursive), with its image.

    Args:
        folder: the folder of labelme jsons.
        image_dir: where the images are when ``imagePath`` does not lead to them.
        classes: the class names in label order (default: ``labels.txt`` or the sorted names).
        skip_empty: leave out images without a non-ignored instance.
        root: the dataset folder (default ``folder``): ``imagePath`` may lead anywhere inside it
            or ``image_dir``, not outside (``outside_root``).
    """
    paths = labelme_jsons(folder)
    if not paths:
        raise DatasetError(f"{folder}: no labelme json files (with 'shapes') in it")
    problems: list[Problem] = []
    roots = [folder] + ([image_dir] if image_dir else []) + [root or folder]
    ctx = {"images": images_by_stem(image_dir) if image_dir else None, "roots": roots,
           "problems": problems}  # fmt: skip
    items = [item for p in paths if (item := _read_one(p, ctx)) is not None]
    names = list(classes) if classes else _class_names(folder, items)
    if not names:
        raise DatasetError(f"{folder}: no labelled shape in any labelme json")
    class_to_label = {name: label for label, name in enumerate(names)}
    parsed = ParsedDataset(folder, [], names, list(range(1, len(names) + 1)), "coco", True)
    parsed.problems = problems
    for image_id, item in enumerate(items, start=1):
        record = make_record(
            item["image"], image_id, item["size"], _instances(item, class_to_label, problems),
            has_masks=True, file_name=os.path.basename(item["image"]),
        )  # fmt: skip
        add_record(parsed, record, skip_empty)
    return parsed
