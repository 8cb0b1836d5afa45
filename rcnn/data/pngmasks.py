"""Reading folders of PNG instance masks (PennFudan-style): pixel value k is instance k.

A mask file belongs to the image with the same stem, or the stem without a ``_mask``/``-mask``/
``_masks`` suffix (``FudanPed00001_mask.png`` -> ``FudanPed00001.png``). Value 0 is background;
255 is VOC's "void" border (left out) unless it is the only non-zero value (a binary 0/255 mask:
one instance). Each instance becomes an RLE mask (pycocotools) with its box.

Classes: every instance is of one class (``classes=[name]``, default ``"object"``), unless a class
map (json or yaml) says otherwise: ``{"classes": [names], "default": name, "instances":
{"<image stem>": {"<k>": name}}, "values": {"<k>": name}}`` — ``values`` applies to every image
(instance values that encode the class), ``instances`` to one image; all keys are optional.

Paths: images and masks are the files listed in their two folders (no path is read from a file),
so none can lead outside the dataset; symbolic links are read as the files they name.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import yaml
from PIL import Image

from rcnn.data import masks as mask_ops
from rcnn.data.folders import files_with_suffix, images_by_stem, stem
from rcnn.data.records import Instance, ParsedDataset, Problem, add_record, check_box, make_record
from rcnn.errors import DatasetError

MASK_SUFFIXES = ("_mask", "-mask", "_masks", "-masks", "_instance", "_instances")
VOID = 255
DEFAULT_CLASS = "object"


def image_stem_of(mask_path: str) -> str:
    """The image stem a mask file names (its stem without a mask suffix)."""
    name = stem(mask_path)
    for suffix in MASK_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def mask_files(folder: str) -> list[str]:
    """The PNG files directly in ``folder``."""
    return files_with_suffix(folder, (".png",))


def load_class_map(path: str | None) -> dict[str, Any]:
    """The class map file (see the module docstring) as a dict; ``{}`` without one."""
    if not path:
        return {}
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)  # json is yaml
    except (OSError, yaml.YAMLError) as error:
        raise DatasetError(f"class map {path}: cannot read ({error})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"class map {path}: expected a mapping (classes/default/values/...)")
    return data


def instance_values(array: np.ndarray) -> list[int]:
    """The instance values of a mask array (see the module docstring for 0 and 255)."""
    values = [int(v) for v in np.unique(array) if v != 0]
    return values if values == [VOID] else [v for v in values if v != VOID]


def _read_mask(path: str, problems: list[Problem]) -> np.ndarray | None:
    try:
        with Image.open(path) as image:
            array = np.asarray(image)
    except (OSError, SyntaxError, ValueError) as error:
        problems.append(Problem(path, None, "bad_mask", f"cannot read mask ({error}): skipped"))
        return None
    if array.ndim == 3:  # an RGB(A) mask: one colour per instance
        rgb = array[..., :3].astype(np.int64)
        colours, inverse = np.unique(rgb.reshape(-1, 3), axis=0, return_inverse=True)
        array = inverse.reshape(rgb.shape[:2])
        if (colours[0] != 0).any():  # no black in the image: every colour is an instance
            array = array + 1
    return array


def _class_of(class_map: dict, image_stem: str, value: int, *, default: str) -> str:
    per_image = (class_map.get("instances") or {}).get(image_stem) or {}
    values = class_map.get("values") or {}
    for table in (per_image, values):
        for key in (value, str(value)):
            if key in table:
                return str(table[key])
    return default


def _instances(array: np.ndarray, item: dict, ctx: dict) -> list[Instance]:
    instances, problems = [], ctx["problems"]
    size = array.shape[:2]
    for value in instance_values(array):
        where = (item["mask"], value)
        name = _class_of(ctx["class_map"], item["stem"], value, default=ctx["default"])
        if name not in ctx["class_to_label"]:
            problems.append(Problem(*where, "unknown_category", f"class {name!r}: dropped"))
            continue
        rle = mask_ops.encode_bitmap(array == value)
        box = check_box(mask_ops.mask_box(rle, *size), size, where, problems)
        if box is not None:
            instances.append(Instance(box, ctx["class_to_label"][name], False, rle, value))
    return instances


def _class_names(class_map: dict, classes: list[str] | None) -> tuple[list[str], str]:
    if classes:
        names = list(classes)
    elif class_map.get("classes"):
        names = [str(n) for n in class_map["classes"]]
    else:
        found = {str(v) for v in (class_map.get("values") or {}).values()}
        for table in (class_map.get("instances") or {}).values():
            found |= {str(v) for v in (table or {}).values()}
        names = sorted(found | {str(class_map.get("default", DEFAULT_CLASS))})
    return names, str(class_map.get("default", names[0]))


def load_png_masks(
    mask_dir: str,
    image_dir: str,
    *,
    class_map: str | None = None,
    classes: list[str] | None = None,
    skip_empty: bool = False,
) -> ParsedDataset:
    """Every PNG mask in ``mask_dir`` with its image in ``image_dir`` (see the module docstring).

    A mask without an image is reported (``missing_image``); a mask whose size differs from its
    image's is rescaled with it (``size_mismatch`` in ``rcnn check``, as for any annotation).
    """
    paths = mask_files(mask_dir)
    if not paths:
        raise DatasetError(f"{mask_dir}: no PNG instance masks in it")
    table = load_class_map(class_map)
    names, default = _class_names(table, classes)
    ctx = {"class_map": table, "default": default,
           "class_to_label": {name: k for k, name in enumerate(names)}, "problems": []}  # fmt: skip
    problems: list[Problem] = ctx["problems"]
    images = images_by_stem(image_dir)
    parsed = ParsedDataset(mask_dir, [], names, list(range(1, len(names) + 1)), "coco", True)
    parsed.problems = problems
    for image_id, path in enumerate(paths, start=1):
        image_stem = image_stem_of(path)
        image_path = images.get(image_stem, os.path.join(image_dir, image_stem + ".png"))
        array = _read_mask(path, problems)
        if array is None:
            continue
        item = {"mask": path, "stem": image_stem}
        record = make_record(
            image_path, image_id, array.shape[:2], _instances(array, item, ctx),
            has_masks=True, file_name=os.path.basename(image_path),
        )  # fmt: skip
        add_record(parsed, record, skip_empty)
    return parsed
