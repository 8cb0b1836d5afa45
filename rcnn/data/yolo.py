"""Reading YOLO txt labels (Ultralytics, Roboflow and darknet exports): boxes and segment polygons.

Layouts: a ``data.yaml`` (``path``, ``train``/``val``/``test``: folders, lists of folders or txt
files listing images; ``names``: a list or ``{id: name}``), or, without one, ``images/`` +
``labels/`` (with ``train``/``val`` sub-folders or flat) or Roboflow's ``train/images`` +
``valid/images``. Class names without a yaml: ``classes.txt`` / ``obj.names`` in the root or the
labels folder, else ``class_<k>``.

A label file lives where Ultralytics looks for it: the image path with its last ``/images/``
replaced by ``/labels/`` and the suffix by ``.txt`` (or beside the image). Each line is
``class cx cy w h`` (a box) or ``class x1 y1 x2 y2 ...`` (a polygon, >= 3 points), normalised to
[0, 1] by the image size. A missing or empty label file is an image without objects (a negative).
Segments give masks when every instance is a polygon; a file mixing boxes and polygons is read as
boxes (reported). Bad lines and unknown class ids are reported and dropped.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import yaml

from rcnn.data.folders import IMAGE_SUFFIXES, files_with_suffix
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

SPLIT_WORDS = {"train": ("train",), "val": ("val", "valid", "validation")}
NAME_FILES = ("classes.txt", "obj.names", "classes.names")


def find_data_yaml(root: str) -> str | None:
    """A yaml in ``root`` with a ``names`` key (``data.yaml`` first), or None."""
    paths = files_with_suffix(root, (".yaml", ".yml"))
    paths.sort(key=lambda p: os.path.basename(p).lower() not in ("data.yaml", "data.yml"))
    for path in paths:
        try:
            with open(path, encoding="utf-8") as handle:
                data = yaml.safe_load(handle)
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(data, dict) and "names" in data:
            return path
    return None


def _names(value: Any, path: str) -> list[str]:
    if isinstance(value, dict):
        try:
            ids = sorted(int(k) for k in value)
        except (TypeError, ValueError):
            raise DatasetError(f"{path}: 'names' keys must be class ids") from None
        if ids != list(range(len(ids))):
            raise DatasetError(f"{path}: 'names' ids must be 0..{len(ids) - 1}")
        table = {int(k): v for k, v in value.items()}
        return [str(table[i]) for i in ids]
    if isinstance(value, list) and value:
        return [str(v) for v in value]
    raise DatasetError(f"{path}: 'names' must be a list or a {{id: name}} mapping")


def _resolve(base: str, yaml_dir: str, entry: str) -> str:
    """A yaml path entry: under ``path``, else beside the yaml (Roboflow: ``../train/...``)."""
    for candidate in (os.path.join(base, entry), os.path.join(yaml_dir, entry)):
        if os.path.exists(candidate):
            return os.path.normpath(candidate)
    trimmed = entry
    while trimmed.startswith("../"):
        trimmed = trimmed[3:]
    return os.path.normpath(os.path.join(yaml_dir, trimmed))


def read_data_yaml(path: str) -> tuple[list[str], dict[str, list[str]]]:
    """``(names, {"train": [sources], "val": [sources]})`` of an Ultralytics data yaml."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except (OSError, yaml.YAMLError) as error:
        raise DatasetError(f"{path}: cannot read ({error})") from None
    yaml_dir = os.path.dirname(os.path.abspath(path))
    base = str(data.get("path") or yaml_dir)
    base = base if os.path.isabs(base) and os.path.isdir(base) else os.path.join(yaml_dir, base)
    base = base if os.path.isdir(base) else yaml_dir
    splits: dict[str, list[str]] = {}
    for split, keys in (("train", ("train",)), ("val", ("val", "valid", "test"))):
        key = next((k for k in keys if data.get(k)), None)
        if key is not None:
            entries = data[key] if isinstance(data[key], list) else [data[key]]
            splits[split] = [_resolve(base, yaml_dir, str(e)) for e in entries]
    return _names(data.get("names"), path), splits


def folder_splits(root: str) -> dict[str, list[str]]:
    """Image folders per split without a yaml: ``images/<split>``, ``<split>/images`` or
    ``images/`` alone (``{"all": [...]}``, split by the hold-out)."""
    splits: dict[str, list[str]] = {}
    for split, words in SPLIT_WORDS.items():
        for word in words:
            for folder in (os.path.join(root, "images", word), os.path.join(root, word, "images")):
                if os.path.isdir(folder):
                    splits.setdefault(split, []).append(folder)
    if not splits and os.path.isdir(os.path.join(root, "images")):
        splits["all"] = [os.path.join(root, "images")]
    return splits


def names_from_files(root: str) -> list[str] | None:
    """Class names from ``classes.txt`` / ``obj.names`` in ``root`` or ``root/labels``."""
    for folder in (root, os.path.join(root, "labels")):
        for name in NAME_FILES:
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as handle:
                    return [line.strip() for line in handle if line.strip()]
    return None


def list_images(
    source: str, *, roots: list[str] | None = None, problems: list[Problem] | None = None
) -> list[str]:
    """The images of a split entry: a folder (recursive, as Ultralytics) or a txt list.

    A txt list's line that leads outside the list's folder and ``roots`` (``..`` past them, or an
    absolute path elsewhere) is refused as ``outside_root`` (appended to ``problems``), unless
    reads outside are allowed (``--allow-outside-root``)."""
    if os.path.isfile(source) and source.endswith(".txt"):
        with open(source, encoding="utf-8") as handle:
            here = os.path.dirname(source)
            listed = [(line.strip(), os.path.normpath(os.path.join(here, line.strip())))
                      for line in handle if line.strip()]  # fmt: skip
        allowed = [here, *(roots or [])]
        refused = [(line, path) for line, path in listed if outside_roots(path, allowed)]
        if problems is not None:
            problems += [outside_root_problem(source, line, allowed) for line, _ in refused]
        return [path for line, path in listed if (line, path) not in refused]
    if not os.path.isdir(source):
        raise DatasetError(f"{source}: YOLO image folder or list not found")
    found = []
    for folder, _, names in sorted(os.walk(source)):
        found += [
            os.path.join(folder, n) for n in sorted(names) if n.lower().endswith(IMAGE_SUFFIXES)
        ]
    return found


def label_path(image_path: str) -> str:
    """Ultralytics' rule: the last ``/images/`` becomes ``/labels/``, the suffix ``.txt``."""
    head, sep, tail = image_path.rpartition(f"{os.sep}images{os.sep}")
    stem_path = os.path.splitext(f"{head}{os.sep}labels{os.sep}{tail}" if sep else image_path)[0]
    if not sep or not os.path.isfile(stem_path + ".txt"):
        beside = os.path.splitext(image_path)[0] + ".txt"
        if os.path.isfile(beside):
            return beside
    return stem_path + ".txt"


def parse_label_file(path: str, problems: list[Problem]) -> list[tuple[int, np.ndarray, int]]:
    """``[(class id, normalised coordinates, line number)]`` of a label file (missing: [])."""
    if not os.path.isfile(path):
        return []
    rows = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            try:
                class_id, values = int(fields[0]), np.array(fields[1:], dtype=np.float64)
            except ValueError:
                problems.append(Problem(path, number, "bad_box", f"line {line.strip()!r}: dropped"))
                continue
            if values.size != 4 and (values.size < 6 or values.size % 2):
                message = f"line has {values.size} numbers (4 for a box, >= 6 even for a polygon)"
                problems.append(Problem(path, number, "bad_box", message + ": dropped"))
                continue
            rows.append((class_id, values, number))
    return rows


def _instance(row: tuple, size: tuple[int, int], ctx: dict):
    """One label line as an ``Instance`` (None when dropped); ``ctx``: ``label_file``,
    ``num_classes``, ``problems``."""
    class_id, values, number = row
    problems = ctx["problems"]
    where = (ctx["label_file"], number)
    if not 0 <= class_id < ctx["num_classes"]:
        problems.append(Problem(*where, "unknown_category", f"class id {class_id}: dropped"))
        return None
    height, width = size
    if values.size == 4:
        cx, cy, w, h = values * [width, height, width, height]
        box, polygon = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], None
    else:
        polygon = values * np.tile([width, height], values.size // 2)
        box = [polygon[0::2].min(), polygon[1::2].min(), polygon[0::2].max(), polygon[1::2].max()]
    checked = check_box(box, size, where, problems)
    if checked is None:
        return None
    return Instance(checked, class_id, False, [polygon] if polygon is not None else None, number)


def load_yolo(
    images: list[str],
    names: list[str],
    *,
    source: str,
    skip_empty: bool = False,
    problems: list[Problem] | None = None,
) -> ParsedDataset:
    """Records for image paths ``images`` with the class ``names`` (see the module docstring);
    ``problems``: found before (e.g. refused list entries), reported with the reader's."""
    problems = list(problems or [])
    rows_per_image, sizes = [], []
    for path in images:
        rows_per_image.append(parse_label_file(label_path(path), problems))
        try:
            sizes.append(image_size(path))
        except (DatasetError, UnreadableImageError):
            sizes.append((1, 1))  # reported as missing / unreadable by the image checks
    kinds = {row[1].size == 4 for rows in rows_per_image for row in rows}
    has_masks = kinds == {False}
    if kinds == {True, False}:
        message = "labels mix boxes and polygons: read as boxes (no masks)"
        problems.append(Problem(source, None, "mixed_labels", message))
    parsed = ParsedDataset(source, [], names, list(range(1, len(names) + 1)), "coco", has_masks)
    parsed.problems = problems
    for image_id, (path, rows, size) in enumerate(
        zip(images, rows_per_image, sizes, strict=True), start=1
    ):
        ctx = {"label_file": label_path(path), "num_classes": len(names), "problems": problems}
        found = [_instance(row, size, ctx) for row in rows]
        instances = [i for i in found if i is not None]
        if not has_masks:
            for instance in instances:
                instance.mask = None
        record = make_record(path, image_id, size, instances, has_masks=has_masks,
                             file_name=os.path.basename(path))  # fmt: skip
        add_record(parsed, record, skip_empty)
    return parsed
