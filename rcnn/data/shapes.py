"""The synthetic shapes dataset: squares, circles and triangles on coloured backgrounds.

Every image (``image_size`` square, 1-4 objects) has a random background colour and objects in
colours clearly different from it (RGB distance >= 120), sides 15%-50% of the image, random
positions; two objects overlap at most IoU 0.3 and each keeps at least 40% of its pixels visible.
Objects are drawn in order into a label map; each mask is the visible part of its object (the
label map's pixels, as exact RLE via pycocotools) and its box surrounds that visible part, so the
occluded parts are cut from the lower masks. The RGB image is the label map coloured, so masks and
pixels agree exactly. Train and val come from separate random streams ``[seed, 0]``,
``[seed, 1]``.

Written as PNGs (Pillow, fixed compression) + COCO json (sorted keys): byte-identical for a seed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_util

from rcnn.errors import DatasetError

CLASSES = ("square", "circle", "triangle")
MAX_IOU = 0.3
MIN_VISIBLE = 0.4
MIN_COLOUR_DISTANCE = 120.0
SIZE_RANGE = (0.15, 0.5)
SETTINGS_FILE = "shapes.json"  # the settings a folder was made with, checked when it is reused


def _shape_bitmap(kind: int, centre: tuple[float, float], side: float, size: int) -> np.ndarray:
    """bool ``[size, size]`` bitmap of one whole shape."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy, half = centre[0], centre[1], side / 2
    corners = [cx - half, cy - half, cx + half, cy + half]
    if kind == 0:
        draw.rectangle(corners, fill=1)
    elif kind == 1:
        draw.ellipse(corners, fill=1)
    else:
        draw.polygon([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)], fill=1)
    return np.asarray(canvas, dtype=bool)


def _colour(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    while True:
        colour = rng.integers(0, 256, 3)
        if np.linalg.norm(colour.astype(float) - background) >= MIN_COLOUR_DISTANCE:
            return colour


def _fits(candidate: np.ndarray, shapes: list[np.ndarray], labels: np.ndarray) -> bool:
    """IoU with every earlier shape <= MAX_IOU and every earlier shape stays >= MIN_VISIBLE."""
    for index, whole in enumerate(shapes, start=1):
        union = np.logical_or(candidate, whole).sum()
        if np.logical_and(candidate, whole).sum() > MAX_IOU * union:
            return False
        visible = np.logical_and(labels == index, ~candidate).sum()
        if visible < MIN_VISIBLE * whole.sum():
            return False
    return True


def render_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """One image: uint8 ``[size, size, 3]`` RGB, int ``[size, size]`` label map (0 = background,
    k = k-th object), and the class index of each object."""
    background = rng.integers(0, 256, 3).astype(float)
    labels = np.zeros((size, size), dtype=np.int32)
    palette = [background]
    shapes: list[np.ndarray] = []
    kinds: list[int] = []
    for _ in range(int(rng.integers(1, 5))):
        for _attempt in range(50):
            kind = int(rng.integers(0, 3))
            side = float(rng.uniform(*SIZE_RANGE)) * size
            centre = tuple(float(v) for v in rng.uniform(side / 2, size - side / 2, 2))
            candidate = _shape_bitmap(kind, centre, side, size)
            if candidate.any() and _fits(candidate, shapes, labels):
                shapes.append(candidate)
                kinds.append(kind)
                labels[candidate] = len(shapes)
                palette.append(_colour(rng, background).astype(float))
                break
    rgb = np.stack(palette)[labels].astype(np.uint8)
    return rgb, labels, kinds


def _annotations(labels: np.ndarray, kinds: list[int], image_id: int, next_id: int) -> list[dict]:
    annotations = []
    for index, kind in enumerate(kinds, start=1):
        rle = mask_util.encode(np.asfortranarray((labels == index).astype(np.uint8)))
        annotations.append(
            {
                "id": next_id + len(annotations),
                "image_id": image_id,
                "category_id": kind + 1,
                "bbox": [float(v) for v in mask_util.toBbox(rle)],
                "area": float(mask_util.area(rle)),
                "iscrowd": 0,
                "segmentation": {
                    "size": [int(s) for s in rle["size"]],
                    "counts": rle["counts"].decode("ascii"),
                },
            }
        )
    return annotations


def _write_split(root: str, split: str, rng: np.random.Generator, count: int, size: int) -> str:
    os.makedirs(os.path.join(root, split), exist_ok=True)
    images, annotations = [], []
    for image_id in range(1, count + 1):
        rgb, labels, kinds = render_image(rng, size)
        file_name = f"{image_id:06d}.png"
        Image.fromarray(rgb).save(
            os.path.join(root, split, file_name), format="PNG", compress_level=6
        )
        images.append({"id": image_id, "file_name": file_name, "height": size, "width": size})
        annotations += _annotations(labels, kinds, image_id, len(annotations) + 1)
    categories = [
        {"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASSES)
    ]
    data = {"images": images, "annotations": annotations, "categories": categories}
    json_path = os.path.join(root, "annotations", f"instances_{split}.json")
    os.makedirs(os.path.dirname(json_path), exist_ok=True)
    with open(json_path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, sort_keys=True, separators=(",", ":"))
    return json_path


def make_shapes(
    out_dir: str,
    *,
    seed: int = 0,
    num_train: int = 500,
    num_val: int = 50,
    image_size: int = 128,
) -> dict[str, str]:
    """Write the shapes dataset into ``out_dir``.

    Layout: ``annotations/instances_{train,val}.json`` and ``{train,val}/NNNNNN.png``. The folder is
    written under a temporary name and renamed, so concurrent callers (DDP ranks) never see half of
    it; an existing complete ``out_dir`` is kept as it is.

    Returns:
        ``{"root", "train", "val"}``: the folder and the two json paths.
    """
    out_dir = os.path.abspath(out_dir)
    paths = {
        "root": out_dir,
        "train": os.path.join(out_dir, "annotations", "instances_train.json"),
        "val": os.path.join(out_dir, "annotations", "instances_val.json"),
    }
    settings = {"seed": seed, "num_train": num_train, "num_val": num_val, "image_size": image_size}
    if os.path.isfile(paths["train"]) and os.path.isfile(paths["val"]):
        _check_settings(out_dir, settings)
        return paths
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".shapes-", dir=parent)
    _write_split(staging, "train", np.random.default_rng([seed, 0]), num_train, image_size)
    _write_split(staging, "val", np.random.default_rng([seed, 1]), num_val, image_size)
    with open(os.path.join(staging, SETTINGS_FILE), "w", encoding="utf-8") as handle:
        json.dump(settings, handle, sort_keys=True)
    if os.path.isfile(paths["train"]) and os.path.isfile(paths["val"]):
        shutil.rmtree(staging, ignore_errors=True)  # another process finished first
        return paths
    if os.path.isdir(out_dir):
        if os.listdir(out_dir):  # never delete what we did not write
            shutil.rmtree(staging, ignore_errors=True)
            raise DatasetError(
                f"{out_dir}: exists and is not a shapes dataset (no {paths['train']})"
            )
        os.rmdir(out_dir)
    try:
        os.rename(staging, out_dir)
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)
    return paths


def _check_settings(out_dir: str, asked: dict[str, int]) -> None:
    """Raise ``DatasetError`` when the shapes dataset already in ``out_dir`` was made with other
    settings than ``asked`` (it is kept, never overwritten). A folder written before the settings
    file existed is checked on its image counts and size."""
    path = os.path.join(out_dir, SETTINGS_FILE)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as handle:
            found = json.load(handle)
    else:
        found = dict(asked)
        for split in ("train", "val"):
            json_path = os.path.join(out_dir, "annotations", f"instances_{split}.json")
            with open(json_path, encoding="utf-8") as handle:
                images = json.load(handle)["images"]
            found[f"num_{split}"] = len(images)
            if images:
                found["image_size"] = images[0]["width"]
    differ = {k: (found.get(k), v) for k, v in asked.items() if found.get(k) != v}
    if differ:
        told = ", ".join(f"{k} {have} (asked {want})" for k, (have, want) in differ.items())
        raise DatasetError(
            f"{out_dir}: holds a shapes dataset made with other settings: {told}; "
            "give another data root, or delete this folder to make it anew"
        )


def default_shapes_dir(seed: int, num_train: int, num_val: int, image_size: int) -> str:
    """``~/.cache/rcnn/shapes/seed<S>_n<train>-<val>_<size>px``."""
    name = f"seed{seed}_n{num_train}-{num_val}_{image_size}px"
    return os.path.join(os.path.expanduser("~"), ".cache", "rcnn", "shapes", name)
