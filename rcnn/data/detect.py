"""One format detector for every command: what a dataset path holds, and how to read a split of it.

``detect_layout(path, images=..., annotations=..., format=...)`` looks at the files (their content,
not the folder names) and returns a ``Layout``; ``read_layout(layout, split, ...)`` parses it into a
``ParsedDataset`` for ``"train"``, ``"val"`` or ``None`` (every image: ``rcnn check``).
``rcnn train/eval/check --dataset PATH`` and ``build_dataset(PATH, ...)`` all go through here.

Formats, in the order a folder is tried: a ``VOCdevkit``; YOLO (a yaml with ``names``, or
``labels/`` of txt files); labelme jsons; COCO jsons (``annotations/*.json`` or beside); VOC xml
(the folder holding the most ``<annotation>`` xml files, at any name); PNG instance masks (a
folder of PNGs whose name contains "mask", or ``annotations=``). Images are found by file stem in
whichever folder holds them (``images=`` names it). A path to a json file is COCO, a yaml YOLO.

Splits: the dataset's own (COCO ``*train*``/``*val*`` jsons, VOC/raccoon split lists, YOLO
``train``/``val``); otherwise a hold-out of ``val_fraction`` of the images (``holdout_split``,
``split_seed``), logged, so that validation never judges on training images.
"""

from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from rcnn.data.coco import load_coco
from rcnn.data.folders import candidate_dirs, check_dir, files_with_suffix, find_image_dir, stem
from rcnn.data.labelme import is_labelme_json, labelme_jsons, load_labelme
from rcnn.data.pngmasks import image_stem_of, load_png_masks, mask_files
from rcnn.data.records import (
    HOLDOUT_FRACTION,
    ParsedDataset,
    Problem,
    holdout_split,
    record_key,
    select_records,
)
from rcnn.data.voc import load_voc_devkit, load_voc_folder, split_stems
from rcnn.data.yolo import find_data_yaml, folder_splits, list_images, load_yolo, read_data_yaml
from rcnn.data.yolo import names_from_files as yolo_names_from_files
from rcnn.errors import DatasetError

logger = logging.getLogger(__name__)

FORMATS = ("coco", "voc", "labelme", "pngmasks", "yolo")
VOC_SPLITS = {"train": [(2007, "trainval"), (2012, "trainval")], "val": [(2007, "test")]}
VOC_CHECK_SPLITS = [(2007, "trainval"), (2007, "test"), (2012, "trainval")]


@dataclass
class Layout:
    """What a dataset path holds.

    Attributes:
        format: ``"coco"``, ``"voc_devkit"``, ``"voc"``, ``"labelme"``, ``"pngmasks"``, ``"yolo"``.
        root: the folder (or file) given.
        annotations: per split ``"train"``/``"val"``/``"all"``, the annotation files or folders
            (COCO jsons, the xml / labelme / mask folder, YOLO image sources).
        images: the image folder (None: found per format).
        names: class names the layout itself declares (YOLO), else None.
    """

    format: str
    root: str
    annotations: dict[str, list[str]] = field(default_factory=dict)
    images: str | None = None
    names: list[str] | None = None


def _xml_count(folder: str) -> int:
    count = 0
    for path in files_with_suffix(folder, (".xml",))[:50]:
        with open(path, encoding="utf-8", errors="replace") as handle:
            count += "<annotation" in handle.read(2048)
    return count


def _best_dir(root: str, score) -> str | None:
    scored = [(score(d), -d.count(os.sep), d) for d in candidate_dirs(root)]
    best = max(scored, default=(0, 0, None))
    return best[2] if best[0] > 0 else None


def _coco_jsons(folder: str) -> list[str]:
    jsons = sorted(glob.glob(os.path.join(folder, "annotations", "*.json")))
    jsons = jsons or sorted(glob.glob(os.path.join(folder, "*.json")))
    return [p for p in jsons if not is_labelme_json(p)]


def _split_coco(jsons: list[str], folder: str) -> dict[str, list[str]]:
    """COCO jsons by split from their names; one json (or no recognisable names): ``"all"``."""
    named = {
        "train": [p for p in jsons if "train" in os.path.basename(p).lower()],
        "val": [p for p in jsons if any(w in os.path.basename(p).lower() for w in ("val", "test"))],
    }
    if len(jsons) == 1 or not (named["train"] or named["val"]):
        if len(jsons) > 1:
            raise DatasetError(
                f"{folder}: several COCO jsons {[os.path.basename(p) for p in jsons]} and none "
                "named *train* / *val*; give one with --dataset FILE.json"
            )
        return {"all": jsons}
    for split in ("train", "val"):
        if not named[split]:
            raise DatasetError(
                f"{folder}: no '{split}' json among {[os.path.basename(p) for p in jsons]}"
            )
    return {"train": named["train"][:1], "val": named["val"][:1], "all": named["train"][:1]
            + named["val"][:1]}  # fmt: skip


def _yolo_layout(root: str) -> Layout | None:
    yaml_path = find_data_yaml(root)
    if yaml_path is not None:
        names, splits = read_data_yaml(yaml_path)
        if not splits:
            raise DatasetError(f"{yaml_path}: no 'train' / 'val' image folders in it")
        return Layout("yolo", root, splits, None, names)
    label_dirs = [d for d in candidate_dirs(root) if os.path.basename(d) == "labels"]
    if not any(glob.glob(os.path.join(d, "*.txt")) or glob.glob(os.path.join(d, "*", "*.txt"))
               for d in label_dirs):  # fmt: skip
        return None
    splits = folder_splits(root)
    if not splits:
        return None
    return Layout("yolo", root, splits, None, yolo_names_from_files(root))


def _mask_dir_score(folder: str) -> int:
    return len(mask_files(folder)) if "mask" in os.path.basename(folder).lower() else 0


def _annotations_layout(root: str, annotations: str) -> Layout:
    """The format of an explicitly given annotation file or folder (``--annotations``)."""
    if os.path.isfile(annotations):
        if annotations.endswith((".yaml", ".yml")):
            names, splits = read_data_yaml(annotations)
            return Layout("yolo", root, splits, None, names)
        if is_labelme_json(annotations):
            raise DatasetError(f"--annotations {annotations}: a labelme json; give its folder")
        return Layout("coco", root, {"all": [annotations]})
    check_dir(annotations, "--annotations")
    if labelme_jsons(annotations):
        return Layout("labelme", root, {"all": [annotations]})
    if _xml_count(annotations):
        return Layout("voc", root, {"all": [annotations]})
    if mask_files(annotations):
        return Layout("pngmasks", root, {"all": [annotations]})
    jsons = _coco_jsons(annotations)
    if jsons:
        return Layout("coco", root, _split_coco(jsons, annotations))
    raise DatasetError(f"--annotations {annotations}: no xml, json or PNG mask files in it")


def _folder_layout(root: str, forced: str | None) -> Layout | None:
    if forced in (None, "voc") and os.path.isdir(os.path.join(root, "VOCdevkit")):
        return Layout("voc_devkit", os.path.join(root, "VOCdevkit"))
    if forced in (None, "voc") and glob.glob(os.path.join(root, "VOC20*", "Annotations")):
        return Layout("voc_devkit", root)
    if forced in (None, "yolo") and (layout := _yolo_layout(root)) is not None:
        return layout
    if forced in (None, "labelme"):
        folder = _best_dir(root, lambda d: len(labelme_jsons(d)))
        if folder is not None:
            return Layout("labelme", root, {"all": [folder]})
    if forced in (None, "coco") and (jsons := _coco_jsons(root)):
        return Layout("coco", root, _split_coco(jsons, root))
    if forced in (None, "voc") and (folder := _best_dir(root, _xml_count)) is not None:
        return Layout("voc", root, {"all": [folder]})
    if forced in (None, "pngmasks") and (folder := _best_dir(root, _mask_dir_score)) is not None:
        return Layout("pngmasks", root, {"all": [folder]})
    return None


def detect_layout(
    path: str,
    *,
    images: str | None = None,
    annotations: str | None = None,
    format: str | None = None,
) -> Layout:
    """What ``path`` holds (see the module docstring).

    Args:
        path: a dataset folder, a COCO json, or a YOLO data yaml.
        images: the image folder, when it cannot be found by file name.
        annotations: the annotation file or folder, when it cannot be found by content.
        format: one of ``FORMATS`` to skip detection of the others.

    Raises:
        DatasetError: nothing readable found (says what was looked for).
    """
    if format is not None and format not in FORMATS:
        raise DatasetError(f"format {format!r}: expected one of {', '.join(FORMATS)}")
    path = os.path.expanduser(path)
    if images is not None:
        check_dir(images, "--images")
    if annotations is not None:
        layout = _annotations_layout(path, os.path.expanduser(annotations))
    elif os.path.isfile(path) and path.endswith((".yaml", ".yml")):
        names, splits = read_data_yaml(path)
        layout = Layout("yolo", os.path.dirname(os.path.abspath(path)), splits, None, names)
    elif os.path.isfile(path) and path.endswith(".json"):
        if is_labelme_json(path):
            raise DatasetError(f"{path}: a labelme json; give the folder of labelme jsons")
        layout = Layout("coco", path, {"all": [path]})
    elif os.path.isdir(path):
        found = _folder_layout(path, format)
        if found is None:
            raise DatasetError(
                f"{path}: no dataset found (looked for a COCO json in annotations/ or beside, VOC "
                "xml, labelme json, PNG mask folder, YOLO data.yaml or labels/); give the files "
                "with --annotations PATH [--images DIR]"
            )
        layout = found
    else:
        raise DatasetError(f"{path}: not a dataset name (shapes, coco, voc), file or folder")
    layout.images = images
    return layout


def _read_all(layout: Layout, sources: list[str], options: dict[str, Any]) -> ParsedDataset:
    """Every image of ``sources`` (one split's annotation files / folders), nothing skipped."""
    classes = options.get("classes")
    if layout.format == "coco":
        parts = [
            load_coco(p, image_dir=layout.images, split=options.get("split_hint"),
                      min_object_area=float(options.get("min_object_area", 0.0)),
                      exact_areas=options.get("exact_areas"))
            for p in sources
        ]  # fmt: skip
        return merge_parsed(parts)
    folder = sources[0]
    if layout.format == "voc":
        stems = [stem(p) for p in files_with_suffix(folder, (".xml",))]
        image_dir = layout.images or find_image_dir(layout.root, stems, exclude=(folder,))
        return load_voc_folder(layout.root, None, classes=classes, xml_dir=folder,
                               image_dir=image_dir)  # fmt: skip
    if layout.format == "labelme":
        return load_labelme(folder, image_dir=layout.images, classes=classes, root=layout.root)
    if layout.format == "pngmasks":
        stems = [image_stem_of(p) for p in mask_files(folder)]
        image_dir = layout.images or find_image_dir(layout.root, stems, exclude=(folder,),
                                                    what="masks")  # fmt: skip
        return load_png_masks(folder, image_dir, class_map=options.get("class_map"),
                              classes=classes)  # fmt: skip
    refused: list[Problem] = []
    roots = [layout.root if os.path.isdir(layout.root) else os.path.dirname(layout.root)]
    images = [p for s in sources for p in list_images(s, roots=roots, problems=refused)]
    if not images:
        raise DatasetError(f"{layout.root}: no images in {sources}")
    names = list(classes or layout.names or _yolo_fallback_names(layout.root))
    return load_yolo(images, names, source=layout.root, problems=refused)


def _yolo_fallback_names(root: str) -> list[str]:
    raise DatasetError(
        f"{root}: YOLO labels without class names; add a data.yaml with 'names' or a classes.txt"
    )


def merge_parsed(parts: list[ParsedDataset]) -> ParsedDataset:
    """Several parsed files of one dataset as one (``rcnn check`` on a train + val folder)."""
    first = parts[0]
    for other in parts[1:]:
        if other.class_names != first.class_names:
            raise DatasetError(
                f"{other.source}: classes {other.class_names} differ from {first.source}'s "
                f"{first.class_names}"
            )
    if len(parts) == 1:
        return first
    merged = ParsedDataset(
        os.path.commonpath([p.source for p in parts]), [], first.class_names,
        first.label_to_category_id, first.metric, any(p.has_masks for p in parts),
    )  # fmt: skip
    for part in parts:
        merged.records += part.records
        merged.problems += part.problems
        merged.missing_images += part.missing_images
        merged.num_empty += part.num_empty
        merged.num_small += part.num_small
    return merged


def _holdout(
    parsed: ParsedDataset, split: str, options: dict[str, Any], *, skip_empty: bool
) -> ParsedDataset:
    """``split`` of a dataset with one annotation set: a logged hold-out of ``val_fraction``."""
    fraction = float(options.get("val_fraction", HOLDOUT_FRACTION))
    if not 0.0 <= fraction < 1.0:
        raise DatasetError(f"val_fraction must be in [0, 1), got {fraction}")
    seed = options.get("split_seed")
    keys = [record_key(r, parsed.metric) for r in parsed.records]
    if fraction == 0.0 or len(keys) < 2:
        logger.warning(
            "%s: %s: validating on the training images (best checkpoint and early stopping then "
            "judge on training data)",
            parsed.source, "val_fraction=0" if fraction == 0.0 else "a single image",
        )  # fmt: skip
        return select_records(parsed, set(keys), skip_empty=skip_empty)
    keep = holdout_split(keys, split, fraction=fraction, seed=seed)
    num_val = len(holdout_split(keys, "val", fraction=fraction, seed=seed))
    how = "the last by id/name" if seed is None else f"drawn with split_seed={seed}"
    logger.info(
        "%s: one annotation set for train and val: %d of %d images held out for validation "
        "(val_fraction=%g, %s)",
        parsed.source, num_val, len(keys), fraction, how,
    )  # fmt: skip
    return select_records(parsed, keep, skip_empty=skip_empty)


def _devkit_splits(root: str, split: str | None) -> list[tuple[int, str]]:
    if split is not None:
        return VOC_SPLITS[split]
    return [
        (year, name)
        for year, name in VOC_CHECK_SPLITS
        if os.path.isfile(os.path.join(root, f"VOC{year}", "ImageSets", "Main", f"{name}.txt"))
    ]


def read_layout(
    layout: Layout, split: str | None, *, skip_empty: bool, options: dict[str, Any] | None = None
) -> ParsedDataset:
    """The images of ``split`` (``None``: all of them) of a detected layout.

    Args:
        layout: from ``detect_layout``.
        split: ``"train"``, ``"val"`` or None.
        skip_empty: leave out images without a non-ignored instance.
        options: ``classes``, ``min_object_area`` and ``exact_areas`` (COCO), ``class_map`` (PNG
            masks), ``val_fraction`` and ``split_seed`` (the hold-out).
    """
    options = dict(options or {})
    if layout.format == "voc_devkit":
        splits = _devkit_splits(layout.root, split)
        if not splits:
            raise DatasetError(f"{layout.root}: no VOC split lists in VOC2007 / VOC2012")
        return load_voc_devkit(layout.root, splits, skip_empty=skip_empty)
    sources = layout.annotations
    own = "train" in sources and "val" in sources
    if split is None:
        every = sources.get("all") or sources.get("train", []) + sources.get("val", [])
        parsed = _read_all(layout, every, options)
        return select_records(parsed, _keys(parsed), skip_empty=skip_empty)
    if own:
        parsed = _read_all(layout, sources[split], {**options, "split_hint": split})
        return select_records(parsed, _keys(parsed), skip_empty=skip_empty)
    every = sources.get("all") or sources.get("train") or sources.get("val", [])
    parsed = _read_all(layout, every, options)
    listed = split_stems(layout.root, split) if layout.format == "voc" else None
    if listed is not None:
        return select_records(parsed, listed, skip_empty=skip_empty)
    return _holdout(parsed, split, options, skip_empty=skip_empty)


def _keys(parsed: ParsedDataset) -> set[Any]:
    return {record_key(r, parsed.metric) for r in parsed.records}
