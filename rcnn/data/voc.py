"""Reading Pascal VOC xml: the VOCdevkit layout, or a custom folder of xml + images.

Coordinates: VOC boxes are 1-based inclusive pixel indices; in our continuous XYXY convention a box
``xmin..xmax`` covers ``[xmin - 1, xmax]`` (as Detectron2 reads it), so ``x2 - x1`` equals the
devkit's ``xmax - xmin + 1``. ``difficult`` objects are kept as ignore regions. Classes come from a
given list (the 20 VOC classes for the devkit) or are discovered from the xml (sorted names); a name
that differs from a class only by case is merged into it and reported (``merge_case_variants``).
"""

from __future__ import annotations

import csv
import glob
import math
import os
import xml.etree.ElementTree as ET
from collections import Counter

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

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".JPG", ".JPEG", ".PNG")


def _text(node: ET.Element | None, tag: str) -> str | None:
    child = node.find(tag) if node is not None else None
    return child.text.strip() if child is not None and child.text else None


def _object(obj: ET.Element) -> tuple[str | None, bool, list]:
    name = _text(obj, "name")
    difficult = _text(obj, "difficult") or "0"
    box_node = obj.find("bndbox")
    coords = [_text(box_node, tag) for tag in ("xmin", "ymin", "xmax", "ymax")]
    try:
        x1, y1, x2, y2 = (float(v) for v in coords)  # type: ignore[arg-type]
        box = [x1 - 1.0, y1 - 1.0, x2, y2]
    except (TypeError, ValueError):
        box = coords
    return name, difficult.strip() not in ("0", "", "false"), box


def _find_image(xml_path: str, root: ET.Element, image_dir: str, problems: list[Problem]) -> str:
    name = _text(root, "filename")
    if name and outside_roots(os.path.join(image_dir, name), [image_dir]):
        problems.append(outside_root_problem(xml_path, name, [image_dir]))
        name = None  # the image is looked for by the xml's name, inside the folder
    if name and os.path.isfile(os.path.join(image_dir, name)):
        return os.path.join(image_dir, name)
    stem = os.path.splitext(os.path.basename(xml_path))[0]
    for ext in IMAGE_EXTENSIONS:
        if os.path.isfile(os.path.join(image_dir, stem + ext)):
            return os.path.join(image_dir, stem + ext)
    return os.path.join(image_dir, name or stem + ".jpg")


def _size(root: ET.Element, image_path: str, xml_path: str, problems: list[Problem]):
    size_node = root.find("size")
    try:
        size = (int(float(_text(size_node, "height"))), int(float(_text(size_node, "width"))))
    except (TypeError, ValueError):
        size = (0, 0)
    if min(size) > 0:
        return size
    problems.append(Problem(xml_path, None, "bad_image", "no <size>: read from the image file"))
    try:
        return image_size(image_path)
    except (DatasetError, UnreadableImageError):
        return (0, 0)


def parse_xml(xml_path: str, image_dir: str, problems: list[Problem]) -> dict | None:
    """One xml file: ``{"image_path", "size", "objects": [(name, difficult, box)]}`` or None."""
    try:
        root = ET.parse(xml_path).getroot()
    except (ET.ParseError, OSError) as error:
        problems.append(Problem(xml_path, None, "bad_xml", f"cannot parse ({error}): skipped"))
        return None
    image_path = _find_image(xml_path, root, image_dir, problems)
    size = _size(root, image_path, xml_path, problems)
    objects = [_object(obj) for obj in root.iter("object")]
    extent = [(float(b[3]), float(b[2])) for _, _, b in objects if _numbers(b)]
    size = size_for_coordinates(
        size,
        file_size_if_different(image_path, size) if min(size) > 0 else None,
        tuple(max(values) for values in zip((0.0, 0.0), *extent, strict=False)),
        (image_path, None),
        problems,
    )
    return {"xml": xml_path, "image_path": image_path, "size": size, "objects": objects}


def _numbers(box: list) -> bool:
    return all(isinstance(v, float) and math.isfinite(v) for v in box)


def _instances(item: dict, class_to_label: dict, problems: list[Problem]) -> list[Instance]:
    instances = []
    for index, (name, difficult, box) in enumerate(item["objects"]):
        where = (item["xml"], index)
        if name not in class_to_label:
            problems.append(Problem(*where, "unknown_category", f"class {name!r}: dropped"))
            continue
        checked = check_box(box, item["size"], where, problems)
        if checked is not None:
            instances.append(Instance(checked, class_to_label[name], difficult, None, index))
    return instances


def image_ids(items: list[dict]) -> list[int]:
    """The record ids of parsed xml ``items``: the numeric file stems when every stem is a
    distinct number (VOC's ``000005`` -> 5, as detection results name such images), else the
    position in the list."""
    stems = [os.path.splitext(os.path.basename(item["image_path"]))[0] for item in items]
    if stems and all(s.isdigit() for s in stems) and len({int(s) for s in stems}) == len(stems):
        return [int(s) for s in stems]
    return list(range(len(items)))


def merge_case_variants(
    items: list[dict], classes: list[str] | tuple[str, ...] | None, problems: list[Problem]
) -> list[str]:
    """Object names that differ from a class only by case (``Raccoon`` among ``raccoon``) are
    renamed to it in ``items``, each rename reported as ``class_name_case``; returns the classes.

    With ``classes`` given, a name matching one of them but for case takes that class. Without,
    classes are discovered (sorted) and each case-insensitive group takes its most frequent
    spelling (ties: the first in sorted order). Names equal but for case are one class in every
    annotation tool's intent; two classes would split the objects silently.
    """
    counts = Counter(name for item in items for name, _, _ in item["objects"] if name)
    if classes is None:
        groups: dict[str, list[str]] = {}
        for name in sorted(counts):
            groups.setdefault(name.lower(), []).append(name)
        chosen = {key: max(names, key=lambda n: counts[n]) for key, names in groups.items()}
        classes = sorted(chosen.values())
    canonical = {name.lower(): name for name in classes}
    for item in items:
        for index, (name, difficult, box) in enumerate(item["objects"]):
            target = canonical.get(name.lower()) if name else None
            if target is None or target == name:
                continue
            item["objects"][index] = (target, difficult, box)
            message = f"class {name!r} differs from {target!r} only by case: merged into it"
            problems.append(Problem(item["xml"], index, "class_name_case", message))
    return list(classes)


def build_voc(
    items: list[dict],
    source: str,
    problems: list[Problem],
    *,
    classes: list[str] | tuple[str, ...] | None = None,
    skip_empty: bool = False,
) -> ParsedDataset:
    """Records from parsed xml ``items``; ``classes=None`` discovers them (sorted names)."""
    classes = merge_case_variants(items, classes, problems)
    if not classes:
        raise DatasetError(f"{source}: no objects with a <name> in any xml file")
    class_to_label = {name: label for label, name in enumerate(classes)}
    parsed = ParsedDataset(
        source, [], list(classes), list(range(1, len(classes) + 1)), "voc", False
    )
    parsed.problems = problems
    for image_id, item in zip(image_ids(items), items, strict=True):
        record = make_record(
            item["image_path"],
            image_id,
            item["size"],
            _instances(item, class_to_label, problems),
            has_masks=False,
            file_name=os.path.basename(item["image_path"]),
        )
        add_record(parsed, record, skip_empty)
    return parsed


def load_voc_devkit(
    root: str,
    splits: list[tuple[int | str, str]],
    *,
    classes: tuple[str, ...] = VOC_CLASSES,
    skip_empty: bool = False,
) -> ParsedDataset:
    """A VOCdevkit folder (``root/VOC2007/...``) for GluonCV-style ``[(2007, "trainval"), ...]``."""
    items: list[dict] = []
    problems: list[Problem] = []
    for year, name in splits:
        base = os.path.join(root, f"VOC{year}")
        list_file = os.path.join(base, "ImageSets", "Main", f"{name}.txt")
        if not os.path.isfile(list_file):
            raise DatasetError(f"{list_file}: VOC split list not found")
        with open(list_file, encoding="utf-8") as handle:
            ids = [line.split()[0] for line in handle if line.strip()]
        for image_stem in ids:
            xml = os.path.join(base, "Annotations", f"{image_stem}.xml")
            if not os.path.isfile(xml):
                problems.append(Problem(xml, None, "missing_annotation", "listed but not found"))
                continue
            item = parse_xml(xml, os.path.join(base, "JPEGImages"), problems)
            if item is not None:
                items.append(item)
    return build_voc(items, root, problems, classes=classes, skip_empty=skip_empty)


def _first_dir(root: str, names: tuple[str, ...]) -> str:
    for name in names:
        if os.path.isdir(os.path.join(root, name)):
            return os.path.join(root, name)
    return root


def split_stems(root: str, split: str) -> set[str] | None:
    """File stems listed for ``split`` in ``splits/`` or ``ImageSets/Main`` (txt, csv), or None."""
    folder = _first_dir(root, ("splits", os.path.join("ImageSets", "Main")))
    words = ("train",) if split == "train" else ("val", "test")
    files = [
        path
        for path in sorted(glob.glob(os.path.join(folder, "*")))
        if path.endswith((".txt", ".csv"))
        and any(os.path.basename(path).lower().startswith(word) for word in words)
    ]
    if not files:
        return None
    stems: set[str] = set()
    for path in files:
        with open(path, encoding="utf-8", newline="") as handle:
            if path.endswith(".csv"):
                names = [row.get("filename", "") for row in csv.DictReader(handle)]
            else:
                names = [line.split()[0] for line in handle if line.strip()]
        stems.update(os.path.splitext(os.path.basename(n))[0] for n in names if n)
    return stems


def load_voc_folder(
    root: str,
    split: str | None = None,
    *,
    classes: list[str] | None = None,
    skip_empty: bool = False,
    xml_dir: str | None = None,
    image_dir: str | None = None,
) -> ParsedDataset:
    """A custom VOC folder: xml in ``xml_dir`` (default ``annotations/``, ``Annotations/`` or
    ``root``), images in ``image_dir`` (default ``images/``, ``JPEGImages/`` or ``root``). The
    split comes from lists in ``splits/`` or ``ImageSets/Main`` named ``train*`` / ``val*`` or
    ``test*`` (txt ids, or csv with a ``filename`` column); without lists, ``holdout_split`` on file
    names; ``split=None``: all.
    """
    xml_dir = xml_dir or _first_dir(root, ("annotations", "Annotations"))
    image_dir = image_dir or _first_dir(root, ("images", "JPEGImages"))
    xml_files = sorted(glob.glob(os.path.join(xml_dir, "*.xml")))
    if not xml_files:
        raise DatasetError(f"{root}: no VOC xml files in {xml_dir}")
    problems: list[Problem] = []
    items = [parse_xml(path, image_dir, problems) for path in xml_files]
    items = [item for item in items if item is not None]
    # discovered over every split, so train and val share the labels
    classes = merge_case_variants(items, classes, problems)
    if split is not None:
        stems = [os.path.splitext(os.path.basename(item["xml"]))[0] for item in items]
        chosen = split_stems(root, split)
        chosen = chosen if chosen is not None else holdout_split(stems, split)
        items = [item for item, stem in zip(items, stems, strict=True) if stem in chosen]
    return build_voc(items, root, problems, classes=classes, skip_empty=skip_empty)
