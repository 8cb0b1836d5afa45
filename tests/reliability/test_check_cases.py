"""`rcnn check` on dozens of broken datasets: the right verdict, message and repair counts.

Each case breaks the base dataset (``reliability_files.coco_dataset``: 6 images, one polygon each)
in one way. ``usable`` cases exit 0 and list their problems by kind (the counts are asserted);
unusable ones exit 1 with a one-line reason naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from reliability_files import (
    HEIGHT,
    WIDTH,
    coco_dataset,
    picture,
    run_cli,
    save,
    truncate,
    voc_dataset,
    voc_xml,
)


def _ann(data, index=0):
    return data["annotations"][index]


def _image(data, index=0):
    return data["images"][index]


def _set(fn):
    """A case that edits the json dict in place."""

    def case(root: Path, data: dict) -> None:
        fn(data)
        save(root, data)

    return case


def _write_image(name: str, array: np.ndarray, **kwargs):
    def case(root: Path, data: dict) -> None:
        Image.fromarray(array).save(root / "images" / name, **kwargs)
        _image(data)["file_name"] = name
        save(root, data)

    return case


def _exif_rotated(root: Path, data: dict) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 64x80, shown 80x64 after the rotation: the annotations match
    Image.fromarray(picture(HEIGHT, WIDTH)).save(root / "images" / "im1.png", exif=exif)


def _bytes(name: str, content: bytes):
    def case(root: Path, data: dict) -> None:
        (root / "images" / name).write_bytes(content)
        _image(data)["file_name"] = name
        save(root, data)

    return case


def _all_objects_unreadable(root: Path, data: dict) -> None:
    for path in (root / "images").glob("*.png"):
        truncate(path)
    Image.fromarray(picture()).save(root / "images" / "empty.png")
    data["images"].append({"id": 99, "file_name": "empty.png", "height": HEIGHT, "width": WIDTH})
    save(root, data)


def _outside(name_of):
    def case(root: Path, data: dict) -> None:
        secret = root.parent / "secret.png"
        Image.fromarray(picture()).save(secret)
        _image(data)["file_name"] = name_of(secret)
        save(root, data)

    return case


def _float_tiff(root: Path, data: dict) -> None:
    gray = np.zeros((HEIGHT, WIDTH), np.float32)
    gray[10:30, 20:44] = 1.0
    Image.fromarray(gray, mode="F").save(root / "images" / "f.tif")
    _image(data)["file_name"] = "f.tif"
    save(root, data)


def _sixteen_bit(root: Path, data: dict) -> None:
    Image.fromarray(np.full((HEIGHT, WIDTH), 60000, np.uint16)).save(root / "images" / "d.png")
    _image(data)["file_name"] = "d.png"
    save(root, data)


GARBAGE_RLE = {"size": [HEIGHT, WIDTH], "counts": "not an rle at all"}
DOUBLED_POLYGON = [[40, 20, 140, 20, 140, 110, 40, 110]]
RGBA = np.dstack([picture(), np.full((HEIGHT, WIDTH), 128, np.uint8)])


def ann(**changes):
    """A case that changes the first annotation."""
    return _set(lambda d: _ann(d).update(changes))


def image(**changes):
    """A case that changes the first image entry."""
    return _set(lambda d: _image(d).update(changes))


def _doubled(data: dict) -> None:  # stated 160x128, and coordinates drawn at that size
    _image(data).update(width=160, height=128)
    _ann(data).update(bbox=[40, 20, 100, 90], segmentation=DOUBLED_POLYGON)


def _text(content: str | bytes):
    def case(root: Path, data: dict) -> None:
        raw = content if isinstance(content, bytes) else content.encode()
        (root / "ann.json").write_bytes(raw)

    return case


def _truncate_all(root: Path, data: dict) -> None:
    for path in (root / "images").glob("*"):
        truncate(path)


# (id, breakage, problem counts by kind): usable, exit 0
USABLE = [
    ("valid", _set(lambda d: None), {}),
    ("box_outside_image", ann(bbox=[60, 10, 40, 20]), {"box_outside_image": 1}),
    ("negative_width", ann(bbox=[20, 10, -5, 20]), {"zero_area_box": 1}),
    ("nan_box", ann(bbox=[float("nan"), 10, 24, 20]), {"nan_coordinates": 1}),
    ("string_box", ann(bbox="20,10,24,20"), {"bad_box": 1}),
    ("unknown_category", ann(category_id=7), {"unknown_category": 1}),
    ("unknown_image", ann(image_id=77), {"unknown_image": 1}),
    ("duplicate_annotation_id", _set(lambda d: _ann(d, 1).update(id=1)), {"duplicate_id": 1}),
    ("duplicate_image_id", _set(lambda d: _image(d, 1).update(id=1)),
     {"duplicate_id": 1, "unknown_image": 1}),
    ("two_point_polygon", ann(segmentation=[[1, 2, 3, 4]]), {"degenerate_polygon": 1}),
    ("nan_polygon", ann(segmentation=[[float("nan")] * 8]), {"degenerate_polygon": 1}),
    ("garbage_crowd_rle", ann(segmentation=GARBAGE_RLE, iscrowd=1), {"bad_mask": 1}),
    ("rle_wrong_size", ann(segmentation={"size": [5, 5], "counts": [25]}), {"bad_mask": 1}),
    ("rle_counts_number", ann(segmentation={"size": [HEIGHT, WIDTH], "counts": 17}),
     {"bad_mask": 1}),
    ("area_wrong", ann(area=5.0), {"area_mismatch": 1}),
    ("no_file_name", _set(lambda d: _image(d).pop("file_name")),
     {"bad_image": 1, "unknown_image": 1}),
    ("zero_width", image(width=0), {"bad_image": 1}),
    ("size_halved", image(width=40, height=32), {"size_mismatch": 1, "box_outside_image": 0}),
    ("size_swapped", image(width=HEIGHT, height=WIDTH), {"size_mismatch": 1}),
    ("size_doubled_coordinates_too", _set(_doubled), {"size_mismatch": 1, "box_outside_image": 0}),
    ("class_case", _set(lambda d: d["categories"].append({"id": 2, "name": "Box"})),
     {"class_name_case": 1}),
    ("truncated_image", lambda r, d: truncate(r / "images" / "im2.png"), {"unreadable_image": 1}),
    ("empty_file", _bytes("zero.png", b""), {"unreadable_image": 1}),
    ("text_as_png", _bytes("text.png", b"hello, not an image\n"), {"unreadable_image": 1}),
    ("grayscale", _write_image("g.png", picture()[..., 0]), {"converted_to_rgb": 1}),
    ("rgba", _write_image("a.png", RGBA), {"converted_to_rgb": 1}),
    ("sixteen_bit", _sixteen_bit, {"converted_to_rgb": 1}),
    ("float_tiff_0_1", _float_tiff, {"converted_to_rgb": 1}),
    ("exif_rotation", _exif_rotated, {"exif": 1, "size_mismatch": 0}),
    ("dotdot_file_name", _outside(lambda p: "../../secret.png"),
     {"outside_root": 1, "unknown_image": 1}),
    ("absolute_file_name", _outside(str), {"outside_root": 1, "unknown_image": 1}),
]  # fmt: skip

# (id, breakage, the reason printed): unusable, exit 1
UNUSABLE = [
    ("not_json", _text("{images: ["), "not valid JSON"),
    ("not_utf8", _text(b'{"images": "\xff\xfe"}'), "not valid JSON"),
    ("pickle_payload", _text(b"\x80\x04\x95cos\nsystem\n"), "not valid JSON"),
    ("json_list", _text("[]"), "expected a JSON object"),
    ("no_annotations_key", _set(lambda d: d.pop("annotations")), "malformed 'annotations'"),
    ("no_categories", _set(lambda d: d.update(categories=[])), "no categories"),
    ("no_objects", _set(lambda d: d.update(annotations=[])), "no object to train on"),
    ("only_crowd", _set(lambda d: [a.update(iscrowd=1) for a in d["annotations"]]),
     "no object to train on"),
    ("missing_image", lambda r, d: (r / "images" / "im3.png").unlink(), "image file(s) missing"),
    ("missing_subfolder", image(file_name="nowhere/x.png"), "1 image file(s) missing"),
    ("every_image_unreadable", _truncate_all, "no readable image"),
    ("every_object_unreadable", _all_objects_unreadable,
     "every image with an object is unreadable"),
]  # fmt: skip


def _report(capsys, argv) -> dict:
    code, out, _ = run_cli(capsys, ["check", *argv, "--json"])
    assert code == 0, out
    return json.loads(out)


@pytest.mark.parametrize("name,breakage,counts", USABLE, ids=[c[0] for c in USABLE])
def test_usable_dataset_reports_each_repair(tmp_path, capsys, name, breakage, counts):
    root = tmp_path / "ds"
    breakage(root, coco_dataset(root))
    report = _report(capsys, ["--coco", root / "ann.json"])
    assert report["usable"], report["reason"]
    for kind, count in counts.items():
        assert report["problems_by_kind"].get(kind, 0) == count, report["problems"]
    if not counts:
        assert report["problems"] == []


@pytest.mark.parametrize("name,breakage,message", UNUSABLE, ids=[c[0] for c in UNUSABLE])
def test_unusable_dataset_exits_1_with_the_reason(tmp_path, capsys, name, breakage, message):
    root = tmp_path / "ds"
    breakage(root, coco_dataset(root))
    code, _, err = run_cli(capsys, ["check", "--coco", root / "ann.json"])
    lines = [line for line in err.splitlines() if line.startswith("rcnn check: unusable:")]
    assert code == 1 and len(lines) == 1 and message in lines[0], err


def test_outside_root_is_allowed_on_request(tmp_path, capsys):
    root = tmp_path / "ds"
    _outside(lambda p: "../../secret.png")(root, coco_dataset(root))
    report = _report(capsys, ["--coco", root / "ann.json", "--allow-outside-root"])
    assert "outside_root" not in report["problems_by_kind"] and report["images"] == 6
    refused = _report(capsys, ["--coco", root / "ann.json"])
    [problem] = [p for p in refused["problems"] if p["kind"] == "outside_root"]
    assert "'../../secret.png' leads outside the dataset folder" in problem["problem"]
    assert refused["images"] == 5


def _entity_bomb() -> str:
    """A billion-laughs xml (10^9 'a's once expanded): expat refuses it."""
    pairs = zip("abcdefgh", "bcdefghi", strict=True)
    entities = "".join(f'<!ENTITY {c} "{("&" + p + ";") * 10}">' for p, c in pairs)
    return (
        f'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">{entities}]>'
        "<annotation><filename>&i;</filename></annotation>"
    )


NO_SIZE = voc_xml("v0.png", "cat").replace("<size>", "<no>").replace("</size>", "</no>")
BAD_BOX = voc_xml("v0.png", "cat", box=("a", 1, 5, 5))
HALVED = voc_xml("v0.png", "cat", size=(40, 32))

# (id, object classes, an xml written over or beside them, problem counts, classes found)
VOC_CASES = [
    ("valid", ["cat", "dog"], None, {}, ["cat", "dog"]),
    ("class_case", ["raccoon", "raccoon", "Raccoon"], None, {"class_name_case": 1}, ["raccoon"]),
    ("broken_xml", ["cat"], ("v9.xml", "<annotation><object>"), {"bad_xml": 1}, ["cat"]),
    ("entity_bomb", ["cat"], ("v9.xml", _entity_bomb()), {"bad_xml": 1}, ["cat"]),
    ("no_size", ["cat"], ("v0.xml", NO_SIZE), {"bad_image": 1}, ["cat"]),
    ("box_not_numbers", ["cat", "cat"], ("v0.xml", BAD_BOX), {"bad_box": 1}, ["cat"]),
    ("dotdot_filename", ["cat"], ("v0.xml", voc_xml("../../../etc/passwd", "cat")),
     {"outside_root": 1}, ["cat"]),
    ("size_halved", ["cat"], ("v0.xml", HALVED), {"size_mismatch": 1, "box_outside_image": 0},
     ["cat"]),
]  # fmt: skip


@pytest.mark.parametrize(
    "name,names,extra,counts,classes", VOC_CASES, ids=[c[0] for c in VOC_CASES]
)
def test_voc_cases(tmp_path, capsys, name, names, extra, counts, classes):
    root = tmp_path / "voc"
    voc_dataset(root, names)
    if extra:
        (root / "annotations" / extra[0]).write_text(extra[1])
    report = _report(capsys, ["--voc", root])
    assert report["usable"] and list(report["classes"]) == classes, report
    for kind, count in counts.items():
        assert report["problems_by_kind"].get(kind, 0) == count, report["problems"]
    if not counts:
        assert report["problems"] == []
