"""``build_dataset``: from a name or a path to a ``DetectionDataset``.

Specs:
- ``"shapes"``: generated (once) into ``data_root`` or ``~/.cache/rcnn/shapes/seed<S>_...``.
- ``"coco"``: ``data_root`` (default ``~/.cache/rcnn/datasets/coco``) holding
  ``annotations/instances_{train,val}2017.json`` and ``{train,val}2017/``.
- ``"voc"``: ``data_root`` (default ``~/.cache/rcnn/datasets/voc``) holding ``VOCdevkit/VOC2007``
  and ``VOC2012``; train = ``[(2007, "trainval"), (2012, "trainval")]``, val = ``[(2007, "test")]``.
- a COCO json file: all its images, whatever the split (pass a folder for a train/val split).
- a folder of COCO jsons: ``annotations/*train*.json`` / ``*val*.json`` (or ``*.json`` beside);
  a folder with a single json is split by ``holdout_split`` (the last 15% of image ids are val).
- a VOC-style folder (``annotations/*.xml`` or ``Annotations/*.xml``) or a VOCdevkit.
"""

from __future__ import annotations

import glob
import os
from typing import Any

from rcnn.data.coco import load_coco
from rcnn.data.dataset import DetectionDataset, Transform
from rcnn.data.records import ParsedDataset, outside_root_allowed
from rcnn.data.shapes import default_shapes_dir, make_shapes
from rcnn.data.voc import load_voc_devkit, load_voc_folder
from rcnn.errors import DatasetError

VOC_SPLITS = {"train": [(2007, "trainval"), (2012, "trainval")], "val": [(2007, "test")]}
SHAPES_DEFAULTS = {"seed": 0, "num_train": 500, "num_val": 50, "image_size": 128}
# the ``**options`` build_dataset takes (TrainConfig.dataset_options), for shapes and for the others
DATASET_OPTIONS = {
    "shapes": ("seed", "num_train", "num_val", "image_size", "min_object_area"),
    "other": ("min_object_area", "classes", "allow_outside_root"),
}


def _default_root(name: str) -> str:
    return os.path.join(os.path.expanduser("~"), ".cache", "rcnn", "datasets", name)


def _shapes(split: str, data_root: str | None, options: dict[str, Any]) -> str:
    settings = {**SHAPES_DEFAULTS, **options}
    root = data_root or default_shapes_dir(**settings)
    return make_shapes(root, **settings)[split]


def _coco_jsons(folder: str, split: str) -> tuple[str, str | None]:
    """The json for ``split`` in a folder, and the hold-out part when there is a single json."""
    jsons = sorted(glob.glob(os.path.join(folder, "annotations", "*.json")))
    jsons = jsons or sorted(glob.glob(os.path.join(folder, "*.json")))
    if not jsons:
        raise DatasetError(f"{folder}: no COCO json in annotations/ or beside")
    words = ("train",) if split == "train" else ("val", "test")
    matching = [p for p in jsons if any(w in os.path.basename(p).lower() for w in words)]
    others = "val" if split == "train" else "train"
    if len(jsons) == 1 or not matching:
        has_other = any(others in os.path.basename(p).lower() for p in jsons)
        if len(jsons) == 1 or not has_other:
            return jsons[0], split
        raise DatasetError(
            f"{folder}: no '{split}' json among {[os.path.basename(p) for p in jsons]}"
        )
    return matching[0], None


def _is_voc_folder(folder: str) -> bool:
    return any(
        glob.glob(os.path.join(folder, sub, "*.xml")) for sub in ("annotations", "Annotations", ".")
    )


def parse_spec(
    spec: str, split: str, *, data_root: str | None, skip_empty: bool, options: dict[str, Any]
) -> ParsedDataset:
    """Read the annotations ``spec`` names for ``split`` (see the module docstring)."""
    min_area = float(options.pop("min_object_area", 0.0))
    if spec == "shapes":
        path = _shapes(split, data_root, options)
        return load_coco(path, split=split, skip_empty=skip_empty, min_object_area=min_area)
    if spec == "coco":
        root = data_root or _default_root("coco")
        path = os.path.join(root, "annotations", f"instances_{split}2017.json")
        return load_coco(path, split=split, skip_empty=skip_empty, min_object_area=min_area)
    if spec == "voc":
        root = os.path.join(data_root or _default_root("voc"), "VOCdevkit")
        return load_voc_devkit(root, VOC_SPLITS[split], skip_empty=skip_empty)
    path = os.path.expanduser(spec)
    if os.path.isfile(path) and path.endswith(".json"):
        return load_coco(path, split=split, skip_empty=skip_empty, min_object_area=min_area)
    if not os.path.isdir(path):
        raise DatasetError(f"{spec}: not a dataset name (shapes, coco, voc), json file or folder")
    if os.path.isdir(os.path.join(path, "VOCdevkit")):
        return load_voc_devkit(
            os.path.join(path, "VOCdevkit"), VOC_SPLITS[split], skip_empty=skip_empty
        )
    if _is_voc_folder(path):
        return load_voc_folder(path, split, skip_empty=skip_empty, classes=options.get("classes"))
    json_path, holdout = _coco_jsons(path, split)
    return load_coco(
        json_path, split=split, holdout=holdout, skip_empty=skip_empty, min_object_area=min_area
    )


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
        split: ``"train"`` or ``"val"``.
        data_root: the folder of ``"coco"``/``"voc"``, or where ``"shapes"`` is generated.
        transform: applied to each ``(image, Targets)``.
        skip_empty: leave out images without a non-ignored instance; None: True for train only.
        **options: ``min_object_area`` (pixels, COCO), ``classes`` (VOC folders),
            ``allow_outside_root`` (follow image paths such as ``../x.jpg`` or ``/abs/x.jpg`` that
            leave the dataset folder; refused and reported as ``outside_root`` by default), and
            for shapes ``seed``, ``num_train``, ``num_val``, ``image_size``.

    Raises:
        DatasetError: unknown spec, malformed annotations, missing images (named).
    """
    if split not in ("train", "val"):
        raise DatasetError(f"split must be 'train' or 'val', got {split!r}")
    skip = (split == "train") if skip_empty is None else bool(skip_empty)
    options = dict(options)
    with outside_root_allowed(bool(options.pop("allow_outside_root", False))):
        parsed = parse_spec(spec, split, data_root=data_root, skip_empty=skip, options=options)
    return DetectionDataset(parsed, transform)
