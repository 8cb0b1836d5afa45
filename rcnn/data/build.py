"""``build_dataset``: from a name or a path to a ``DetectionDataset``.

Specs:
- ``"shapes"``: generated (once) into ``data_root`` or ``~/.cache/rcnn/shapes/seed<S>_...``.
- ``"coco"``: ``data_root`` (default ``~/.cache/rcnn/datasets/coco``) holding
  ``annotations/instances_{train,val}2017.json`` and ``{train,val}2017/``.
- ``"voc"``: ``data_root`` (default ``~/.cache/rcnn/datasets/voc``) holding ``VOCdevkit/VOC2007``
  and ``VOC2012``; train = ``[(2007, "trainval"), (2012, "trainval")]``, val = ``[(2007, "test")]``.
- a path: whatever ``rcnn.data.detect`` finds there (COCO json file or folder, VOCdevkit, VOC xml
  folder under any names, labelme folder, PNG instance masks, YOLO). A dataset without its own
  train/val split (one json, one folder) is split by ``holdout_split``: ``val_fraction`` (15%) of
  the images for val, the last by id/name or drawn with ``split_seed``; the split is logged.
"""

from __future__ import annotations

import os
from typing import Any

from rcnn.data.coco import load_coco
from rcnn.data.dataset import DetectionDataset, Transform
from rcnn.data.detect import VOC_SPLITS, detect_layout, read_layout
from rcnn.data.records import ParsedDataset, outside_root_allowed
from rcnn.data.shapes import default_shapes_dir, make_shapes
from rcnn.data.voc import load_voc_devkit
from rcnn.errors import DatasetError

SHAPES_DEFAULTS = {"seed": 0, "num_train": 500, "num_val": 50, "image_size": 128}
# the ``**options`` build_dataset takes (TrainConfig.dataset_options), for shapes and for the others
DATASET_OPTIONS = {
    "shapes": ("seed", "num_train", "num_val", "image_size", "min_object_area", "keep_empty"),
    "other": (
        "min_object_area",
        "classes",
        "allow_outside_root",
        "images",
        "annotations",
        "format",
        "val_fraction",
        "split_seed",
        "class_map",
        "keep_empty",
    ),
}


def _default_root(name: str) -> str:
    return os.path.join(os.path.expanduser("~"), ".cache", "rcnn", "datasets", name)


def _shapes(split: str, data_root: str | None, options: dict[str, Any]) -> str:
    settings = {**SHAPES_DEFAULTS, **options}
    root = data_root or default_shapes_dir(**settings)
    return make_shapes(root, **settings)[split]


PATH_OPTIONS = ("images", "annotations", "format")


def parse_spec(
    spec: str,
    split: str | None,
    *,
    data_root: str | None,
    skip_empty: bool,
    options: dict[str, Any],
) -> ParsedDataset:
    """Read the annotations ``spec`` names for ``split`` (see the module docstring)."""
    min_area = float(options.get("min_object_area", 0.0))
    images = options.get("images")
    if spec in ("shapes", "coco", "voc") and split is None:
        raise DatasetError(f"dataset {spec}: give split 'train' or 'val' ('all' is for paths)")
    if spec == "shapes":
        path = _shapes(split, data_root, {k: v for k, v in options.items() if k in SHAPES_DEFAULTS})
        return load_coco(path, split=split, skip_empty=skip_empty, min_object_area=min_area)
    if spec == "coco":
        root = data_root or _default_root("coco")
        path = os.path.join(root, "annotations", f"instances_{split}2017.json")
        return load_coco(
            path, image_dir=images, split=split, skip_empty=skip_empty, min_object_area=min_area
        )
    if spec == "voc":
        root = os.path.join(data_root or _default_root("voc"), "VOCdevkit")
        return load_voc_devkit(root, VOC_SPLITS[split], skip_empty=skip_empty)
    layout = detect_layout(
        spec, images=images, annotations=options.get("annotations"), format=options.get("format")
    )
    rest = {k: v for k, v in options.items() if k not in PATH_OPTIONS}
    return read_layout(layout, split, skip_empty=skip_empty, options=rest)


def build_dataset(
    spec: str,
    split: str,
    *,
    data_root: str | None = None,
    transform: Transform | None = None,
    skip_empty: bool | None = None,
    **options: Any,
) -> DetectionDataset:
    """The dataset ``spec`` names, for ``split`` (``"train"`` or ``"val"``).

    Args:
        spec: ``"shapes"``, ``"coco"``, ``"voc"``, or a path (see the module docstring).
        split: ``"train"``, ``"val"``, or ``"all"`` (every image of a path, no hold-out).
        data_root: the folder of ``"coco"``/``"voc"``, or where ``"shapes"`` is generated.
        transform: applied to each ``(image, Targets)``.
        skip_empty: leave out images without a non-ignored instance; None: True for train only,
            unless ``keep_empty=True`` (empty images kept as negatives).
        **options: ``keep_empty``; ``images`` (image folder), ``annotations`` (annotation file or
            folder), ``format`` (skip detection), ``val_fraction`` and ``split_seed`` (the
            hold-out of a single annotation set), ``min_object_area`` (pixels, COCO),
            ``classes`` (folders), ``class_map`` (PNG masks), ``allow_outside_root`` (follow
            image paths such as ``../x.jpg`` or ``/abs/x.jpg`` that leave the dataset folder;
            refused and reported as ``outside_root`` by default), and for shapes ``seed``,
            ``num_train``, ``num_val``, ``image_size``.

    Raises:
        DatasetError: unknown spec, malformed annotations, missing images (named).
    """
    if split not in ("train", "val", "all"):
        raise DatasetError(f"split must be 'train', 'val' or 'all', got {split!r}")
    options = dict(options)
    keep_empty = bool(options.pop("keep_empty", False))
    skip = (split == "train" and not keep_empty) if skip_empty is None else bool(skip_empty)
    which = None if split == "all" else split
    with outside_root_allowed(bool(options.pop("allow_outside_root", False))):
        parsed = parse_spec(spec, which, data_root=data_root, skip_empty=skip, options=options)
    return DetectionDataset(parsed, transform)
