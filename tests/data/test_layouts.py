"""``build_dataset`` on the standard layouts: COCO 2017 root, VOCdevkit, json folders."""

from __future__ import annotations

import json

import pytest

from rcnn.data import ValTransform, build_dataset
from rcnn.errors import DatasetError


def _voc_xml(name, objects):
    body = "".join(
        f"<object><name>{cls}</name><difficult>{d}</difficult><bndbox><xmin>2</xmin><ymin>3</ymin>"
        f"<xmax>20</xmax><ymax>15</ymax></bndbox></object>"
        for cls, d in objects
    )
    size = "<size><width>32</width><height>24</height></size>"
    return f"<annotation><filename>{name}.jpg</filename>{size}{body}</annotation>"


def test_voc_devkit_gluoncv_splits(tmp_path, files):
    lists = {(2007, "trainval"): ["000001", "000002"], (2012, "trainval"): ["2012_01"],
             (2007, "test"): ["000009"]}  # fmt: skip
    for (year, split), stems in lists.items():
        base = tmp_path / "VOCdevkit" / f"VOC{year}"
        (base / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
        (base / "Annotations").mkdir(exist_ok=True)
        (base / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(stems) + "\n")
        for stem in stems:
            files.image(base / "JPEGImages" / f"{stem}.jpg", (24, 32))
            objects = [("dog", 0), ("person", 1)] if stem != "000002" else [("person", 1)]
            (base / "Annotations" / f"{stem}.xml").write_text(_voc_xml(stem, objects))
    train = build_dataset("voc", "train", data_root=str(tmp_path))
    val = build_dataset("voc", "val", data_root=str(tmp_path))
    assert len(train.class_names) == 20 and train.label_to_category_id[0] == 1
    # 000002 holds only a difficult object: skipped as empty for training, kept for val
    assert [r.file_name for r in train.records] == ["000001.jpg", "2012_01.jpg"]
    assert [r.file_name for r in val.records] == ["000009.jpg"]
    record = val.records[0]
    assert record.labels.tolist() == [11, 14] and record.ignore.tolist() == [False, True]
    assert record.boxes[0].tolist() == [1.0, 2.0, 20.0, 15.0]


def test_coco_root_and_val_transform_scale(tmp_path, files):
    for split, count in (("train", 3), ("val", 2)):
        images = [
            {"id": i, "file_name": f"{i}.png", "height": 20, "width": 30}
            for i in range(1, count + 1)
        ]
        for image in images:
            files.image(tmp_path / f"{split}2017" / image["file_name"], (20, 30))
        anns = [{"id": i, "image_id": i, "category_id": 3, "bbox": [1, 2, 10, 8], "iscrowd": 0}
                for i in range(1, count + 1)]  # fmt: skip
        (tmp_path / "annotations").mkdir(exist_ok=True)
        data = {"images": images, "annotations": anns, "categories": [{"id": 3, "name": "x"}]}
        (tmp_path / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(data))
    train = build_dataset("coco", "train", data_root=str(tmp_path))
    val = build_dataset("coco", "val", data_root=str(tmp_path), transform=ValTransform(40, 100))
    assert (
        len(train) == 3 and train.label_to_category_id == [3] and train.aspect_ratios() == [1.5] * 3
    )
    image, targets = val[0]
    assert image.shape == (3, 40, 60) and targets.scale == 2.0 and targets.orig_size == (20, 30)
    assert targets.boxes.tolist() == [[2.0, 4.0, 22.0, 20.0]]
    # the folder form finds the train/val jsons by name
    assert len(build_dataset(str(tmp_path), "val")) == 2
    with pytest.raises(DatasetError, match="not a dataset name"):
        build_dataset(str(tmp_path / "nothing"), "train")


def test_voc_folder_without_split_lists_uses_the_holdout(tmp_path, files):
    (tmp_path / "Annotations").mkdir()
    for index in range(7):
        files.image(tmp_path / "JPEGImages" / f"im{index}.jpg", (24, 32))
        (tmp_path / "Annotations" / f"im{index}.xml").write_text(_voc_xml(f"im{index}", [("b", 0)]))
    train = build_dataset(str(tmp_path), "train")
    val = build_dataset(str(tmp_path), "val")
    assert [r.file_name for r in val.records] == ["im6.jpg"]  # round(7 * 0.15) = 1, the last name
    assert [r.file_name for r in train.records] == [f"im{i}.jpg" for i in range(6)]


def test_check_on_a_voc_devkit(tmp_path, files, capsys):
    from rcnn.cli import main

    base = tmp_path / "VOCdevkit" / "VOC2007"
    (base / "ImageSets" / "Main").mkdir(parents=True)
    (base / "Annotations").mkdir()
    (base / "ImageSets" / "Main" / "test.txt").write_text("a\nb\n")
    files.image(base / "JPEGImages" / "a.jpg", (24, 32))
    (base / "Annotations" / "a.xml").write_text(_voc_xml("a", [("dog", 0), ("unicorn", 0)]))
    assert main(["check", "--voc", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 1 and report["classes"]["dog"] == 1
    assert report["problems_by_kind"] == {"missing_annotation": 1, "unknown_category": 1}
