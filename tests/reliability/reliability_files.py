"""Builders of the reliability suite: a small valid COCO or VOC dataset, ways to break it, and
running the CLI in-process while checking it never prints a traceback.

The base COCO dataset: ``n`` images of 80x64 pixels (a red 24x20 rectangle at (20, 10) on grey),
each with one polygon annotation of class ``box``, in ``root/images`` with ``root/ann.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from rcnn.cli import main

WIDTH, HEIGHT = 80, 64
BOX = [20, 10, 24, 20]  # XYWH
POLYGON = [20, 10, 44, 10, 44, 30, 20, 30]


def picture(width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    array = np.full((height, width, 3), 90, np.uint8)
    array[10:30, 20:44] = (200, 40, 40)
    return array


def coco_dataset(root: Path, n: int = 6) -> dict:
    """Write the base dataset; returns the json dict (write it back with ``save``)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(1, n + 1):
        Image.fromarray(picture()).save(root / "images" / f"im{i}.png")
        images.append({"id": i, "file_name": f"im{i}.png", "height": HEIGHT, "width": WIDTH})
        annotations.append(
            {"id": i, "image_id": i, "category_id": 1, "bbox": list(BOX), "area": 480.0,
             "iscrowd": 0, "segmentation": [list(POLYGON)]}
        )  # fmt: skip
    data = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "box"}]}
    save(root, data)
    return data


def save(root: Path, data: dict) -> Path:
    path = root / "ann.json"
    path.write_text(json.dumps(data))
    return path


def voc_dataset(root: Path, names: list[str]) -> None:
    """A VOC folder: one image and xml per entry of ``names`` (the object's class)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.fromarray(picture()).save(root / "images" / f"v{i}.png")
        (root / "annotations" / f"v{i}.xml").write_text(voc_xml(f"v{i}.png", name))


def voc_xml(filename: str, name: str, size=(WIDTH, HEIGHT), box=(21, 11, 44, 30)) -> str:
    return (
        f"<annotation><filename>{filename}</filename><size><width>{size[0]}</width>"
        f"<height>{size[1]}</height><depth>3</depth></size><object><name>{name}</name>"
        f"<difficult>0</difficult><bndbox><xmin>{box[0]}</xmin><ymin>{box[1]}</ymin>"
        f"<xmax>{box[2]}</xmax><ymax>{box[3]}</ymax></bndbox></object></annotation>"
    )


def truncate(path: Path) -> None:
    """Keep the first 100 bytes of a file (a cut download)."""
    path.write_bytes(path.read_bytes()[:100])


def run_cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    """``rcnn ARGV`` in-process: (exit code, stdout, stderr); asserts that no traceback was
    printed and that an error is exactly one ``rcnn <command>: error:`` line."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    errors = [line for line in captured.err.splitlines() if ": error: " in line]
    if code in (1, 2) and argv[0] != "check":
        assert len(errors) == 1, captured.err
    return code, captured.out, captured.err


def flip_tensor_bytes(source: Path, target: Path) -> None:
    """Copy checkpoint ``source`` to ``target`` with 8 bytes inverted in the middle of its largest
    tensor record (the zip's own structure left intact, so ``torch.load`` still reads it)."""
    import zipfile

    data = bytearray(source.read_bytes())
    with zipfile.ZipFile(source) as archive:
        record = max(
            (i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size
        )
        start = record.header_offset + 30 + len(record.filename.encode()) + len(record.extra)
    middle = start + record.file_size // 2
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
    target.write_bytes(bytes(data))
