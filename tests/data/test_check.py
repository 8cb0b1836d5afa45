"""``rcnn check``: exit codes, the JSON report, known quirks of the shared data, broken folders."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
from PIL import Image

from rcnn.cli import main


def _check(capsys, *args):
    code = main(["check", *args, "--json"])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else None), err


def test_check_balloon_reports_wrong_areas_and_zero_ids(shared_data, capsys):
    path = shared_data / "balloon" / "annotations" / "custom_val.json"
    code, report, _ = _check(capsys, "--coco", str(path))
    data = json.loads(path.read_text())
    assert code == 0 and report["usable"]
    assert report["images"] == len(data["images"]) == 13
    assert report["instances"] == len(data["annotations"]) == 50
    assert report["classes"] == {"balloon": 50} and report["ignored"] == 0
    assert report["empty_images"] == 0
    assert report["problems_by_kind"] == {"area_mismatch": 50, "zero_id": 2}
    assert {"file", "annotation", "problem"} <= set(report["problems"][0])


def test_check_fruits_nuts_and_raccoon(shared_data, capsys):
    code, report, _ = _check(capsys, "--coco", str(shared_data / "fruits_nuts" / "trainval.json"))
    data = json.loads((shared_data / "fruits_nuts" / "trainval.json").read_text())
    counts = {c["name"]: 0 for c in data["categories"]}
    names = {c["id"]: c["name"] for c in data["categories"]}
    for ann in data["annotations"]:
        counts[names[ann["category_id"]]] += 1
    assert code == 0 and report["classes"] == counts and report["images"] == 18
    code, report, _ = _check(capsys, "--voc", str(shared_data / "raccoon"))
    objects = sum(
        len(ET.parse(p).findall("object"))
        for p in (shared_data / "raccoon" / "annotations").glob("*.xml")
    )
    assert code == 0 and report["images"] == 200 and report["instances"] == objects == 217
    gray = [p for p in report["problems"] if p["kind"] == "converted_to_rgb"]
    assert len(gray) == 3 and all("L image" in p["problem"] for p in gray)


def _broken_folder(root, files):
    images = root / "images"
    files.image(images / "ok.png", (40, 60))
    files.image(images / "gray.png", (40, 60), mode="L")
    files.image(images / "deep.png", (40, 60), mode="I;16")
    trunc = images / "trunc.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), np.uint8)).save(trunc)
    trunc.write_bytes(trunc.read_bytes()[:200])
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.new("RGB", (60, 40)).save(images / "rot.png", exif=exif)
    files.image(images / "small.png", (20, 30))
    names = ["ok.png", "gray.png", "deep.png", "trunc.jpg", "rot.png", "small.png"]
    entries = [
        {"id": i + 1, "file_name": n, "height": 40, "width": 60} for i, n in enumerate(names)
    ]
    entries[4].update(height=60, width=40)  # annotated on the EXIF-rotated picture
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [50, 30, 20, 20]},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [5, 5, -3, 10]},
        {"id": 3, "image_id": 2, "category_id": 7, "bbox": [5, 5, 10, 10]},
        {"id": 3, "image_id": 3, "category_id": 2, "bbox": [5, 5, 10, 10]},
        {"id": 5, "image_id": 3, "category_id": 2, "bbox": [float("nan"), 5, 10, 10]},
    ]
    return files.coco(root, entries, anns)


def test_check_lists_every_problem_of_a_broken_folder(tmp_path, files, capsys):
    path = _broken_folder(tmp_path, files)
    code, report, _ = _check(capsys, "--coco", str(path))
    assert code == 0 and report["usable"]  # repaired or skipped: still trainable
    found = {(p["file"].rsplit("/", 1)[-1], p["annotation"], p["kind"]) for p in report["problems"]}
    assert found == {
        ("ann.json", 1, "box_outside_image"),
        ("ann.json", 2, "zero_area_box"),
        ("ann.json", 3, "unknown_category"),
        ("ann.json", 3, "duplicate_id"),
        ("ann.json", 5, "nan_coordinates"),
        ("gray.png", None, "converted_to_rgb"),
        ("deep.png", None, "converted_to_rgb"),
        ("trunc.jpg", None, "unreadable_image"),
        ("rot.png", None, "exif"),
        ("small.png", None, "size_mismatch"),
    }
    assert report["unreadable_images"] == 1 and report["instances"] == 2
    assert report["empty_images"] == 4  # gray (its box was unknown), trunc, rot, small
    assert main(["check", "--coco", str(path)]) == 0
    text = capsys.readouterr().out
    assert "trunc.jpg: unreadable_image" in text and "usable: yes" in text


def test_check_unusable_datasets_exit_1_with_one_line(tmp_path, files, capsys):
    path = _broken_folder(tmp_path, files)
    data = json.loads(path.read_text())
    data["images"].append({"id": 9, "file_name": "missing.png", "height": 4, "width": 4})
    path.write_text(json.dumps(data))
    code, report, err = _check(capsys, "--coco", str(path))
    assert code == 1 and not report["usable"] and "missing.png" in err
    assert len(err.strip().splitlines()) == 1
    path.write_text("{not json")
    code, report, err = _check(capsys, "--coco", str(path))
    assert code == 1 and report is None and "not valid JSON" in err
    assert len(err.strip().splitlines()) == 1


def test_check_show_saves_pictures(shared_data, tmp_path, capsys):
    out = tmp_path / "pictures"
    code = main(["check", "--coco", str(shared_data / "fruits_nuts" / "trainval.json"),
                 "--show", "2", "--out", str(out)])  # fmt: skip
    capsys.readouterr()
    pictures = sorted(out.glob("*.png"))
    assert code == 0 and len(pictures) == 2
    original = Image.open(shared_data / "fruits_nuts" / "images" / "0.jpg")
    drawn = Image.open(pictures[0])
    assert drawn.size == original.size
    assert np.abs(np.asarray(drawn, float) - np.asarray(original.convert("RGB"), float)).mean() > 5
