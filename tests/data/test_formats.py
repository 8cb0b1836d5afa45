"""The format detector and the readers of what users bring: labelme, PNG instance masks, YOLO,
VOC / COCO under any folder names, the hold-out split and empty images kept as negatives."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_util

from rcnn.data import build_dataset
from rcnn.data.check import build_report, parse_for_check
from rcnn.data.detect import detect_layout
from rcnn.data.masks import to_bitmap
from rcnn.errors import DatasetError


def _labelme(path, shapes, size=(40, 60), image="../pics/{stem}.jpg"):
    data = {"version": "5.2.1", "flags": {}, "shapes": shapes, "imageHeight": size[0],
            "imageWidth": size[1], "imagePath": image.format(stem=path.stem)}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _shape(label, points, group=None, kind="polygon"):
    return {"label": label, "points": points, "group_id": group, "shape_type": kind, "flags": {}}


def test_labelme_groups_ignore_and_shape_types(tmp_path, files):
    for name in ("a", "b"):
        files.image(tmp_path / "pics" / f"{name}.jpg", (40, 60))
    tri = [[2, 2], [20, 2], [2, 20]]
    _labelme(tmp_path / "json" / "a.json", [
        _shape("cat", tri, group=1), _shape("cat", [[30, 30], [40, 30], [40, 38]], group=1),
        _shape("dog", [[40, 2], [50, 12]], kind="rectangle"),
        _shape("__ignore__", [[0, 30], [10, 30], [10, 39], [0, 39]]),
        _shape("dog", [[5, 5]], kind="point"),
    ])  # fmt: skip
    _labelme(tmp_path / "json" / "b.json", [_shape("dog", [[30, 20], [30, 25]], kind="circle")])
    layout = detect_layout(str(tmp_path))
    assert layout.format == "labelme"
    dataset = build_dataset(str(tmp_path), "all")
    assert dataset.class_names == ["cat", "dog"] and dataset.has_masks
    a, b = dataset.records
    # cat: the two group-1 polygons are one instance; __ignore__: one ignore region per class
    assert a.labels.tolist() == [0, 1, 0, 1] and a.ignore.tolist() == [False, False, True, True]
    assert len(a.masks[0]) == 2
    expected = mask_util.area(mask_util.merge(mask_util.frPyObjects(
        [[v for point in tri for v in point], [30, 30, 40, 30, 40, 38]], 40, 60)))  # fmt: skip
    assert to_bitmap(a.masks[0], 40, 60).sum() == expected
    assert a.boxes[1].tolist() == [40, 2, 50, 12]
    assert b.boxes[0].tolist() == pytest.approx([25, 15, 35, 25], abs=0.1)  # radius 5
    report = build_report(parse_for_check(dataset=str(tmp_path)))
    assert report["problems_by_kind"] == {"degenerate_polygon": 1}
    assert report["instances"] == 3 and report["ignored"] == 2


def _mask_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


def test_png_instance_masks_pennfudan_layout_and_class_map(tmp_path, files):
    for name in ("p1", "p2"):
        files.image(tmp_path / "PNGImages" / f"{name}.png", (30, 40))
    first = np.zeros((30, 40))
    first[2:10, 3:8] = 1  # instance 1: rows 2..9, columns 3..7
    first[15:25, 20:35] = 2
    first[0, :] = 255  # VOC's void border: not an instance
    _mask_png(tmp_path / "PedMasks" / "p1_mask.png", first)
    second = np.zeros((30, 40))
    second[5:6, 5:9] = 255  # a binary 0/255 mask: one instance
    _mask_png(tmp_path / "PedMasks" / "p2_mask.png", second)
    dataset = build_dataset(str(tmp_path), "all")
    assert detect_layout(str(tmp_path)).format == "pngmasks"
    assert dataset.class_names == ["object"]
    one, two = dataset.records
    assert one.boxes.tolist() == [[3, 2, 8, 10], [20, 15, 35, 25]]
    assert [int(to_bitmap(m, 30, 40).sum()) for m in one.masks] == [40, 150]
    assert two.boxes.tolist() == [[5, 5, 9, 6]]
    class_map = tmp_path / "classes.yaml"
    class_map.write_text("classes: [person, bag]\ninstances:\n  p1: {2: bag}\n")
    mapped = build_dataset(str(tmp_path), "all", class_map=str(class_map))
    assert mapped.class_names == ["person", "bag"]
    assert mapped.records[0].labels.tolist() == [0, 1]


def _yolo_image(root, split, name, files, lines):
    files.image(root / "images" / split / f"{name}.jpg", (50, 100))
    label = root / "labels" / split / f"{name}.txt"
    label.parent.mkdir(parents=True, exist_ok=True)
    label.write_text("\n".join(lines) + "\n")


def test_yolo_boxes_segments_splits_and_negatives(tmp_path, files):
    root = tmp_path / "yolo"
    _yolo_image(root, "train", "t1", files, ["1 0.5 0.5 0.2 0.4", "7 0.1 0.1 0.1 0.1", "0 0.5"])
    _yolo_image(root, "train", "t2", files, [])  # an empty label file: a negative image
    _yolo_image(root, "val", "v1", files, ["0 0.25 0.5 0.1 0.2"])
    (root / "data.yaml").write_text(
        f"path: {root}\ntrain: images/train\nval: images/val\nnames: {{0: cat, 1: dog}}\n"
    )
    train = build_dataset(str(root), "train")
    val = build_dataset(str(root), "val")
    assert train.class_names == ["cat", "dog"] and not train.has_masks
    assert [r.file_name for r in train.records] == ["t1.jpg"]  # t2 (empty) skipped for training
    assert train.records[0].boxes.tolist() == [[40, 15, 60, 35]] and train.records[0].labels == [1]
    assert val.records[0].boxes.tolist() == [[20, 20, 30, 30]]
    kinds = train.parsed.problem_counts()
    assert kinds == {"unknown_category": 1, "bad_box": 1}
    negatives = build_dataset(str(root), "train", keep_empty=True)
    assert [r.file_name for r in negatives.records] == ["t1.jpg", "t2.jpg"]
    # Ultralytics segments: polygons in normalised coordinates give masks
    seg = tmp_path / "seg"
    _yolo_image(seg, "train", "s", files, ["0 0.1 0.2 0.5 0.2 0.5 0.8"])
    (seg / "classes.txt").write_text("leaf\n")
    dataset = build_dataset(str(seg), "all")
    assert dataset.has_masks and dataset.records[0].boxes.tolist() == [[10, 10, 50, 40]]
    polygon = dataset.records[0].masks[0][0]
    assert polygon.tolist() == [10, 10, 50, 10, 50, 40]


def _voc_xml(name, w=32, h=24):
    box = "<bndbox><xmin>2</xmin><ymin>3</ymin><xmax>20</xmax><ymax>15</ymax></bndbox>"
    return (f"<annotation><filename>{name}.jpg</filename><size><width>{w}</width><height>{h}"
            f"</height></size><object><name>b</name>{box}</object></annotation>")  # fmt: skip


def test_voc_with_any_folder_names(tmp_path, files):
    for index in range(4):
        files.image(tmp_path / "pictures" / f"im{index}.jpg", (24, 32))
        (tmp_path / "annots").mkdir(exist_ok=True)
        (tmp_path / "annots" / f"im{index}.xml").write_text(_voc_xml(f"im{index}"))
    layout = detect_layout(str(tmp_path))
    assert layout.format == "voc" and layout.annotations["all"][0].endswith("annots")
    dataset = build_dataset(str(tmp_path), "all")
    assert len(dataset) == 4 and dataset.records[0].image_path.endswith("pictures/im0.jpg")
    assert build_report(parse_for_check(voc=str(tmp_path)))["problems_by_kind"] == {}
    # images elsewhere: --images names them (check honours it too)
    other = tmp_path / "elsewhere"
    for index in range(4):
        files.image(other / f"im{index}.jpg", (24, 32))
    (tmp_path / "pictures" / "im0.jpg").unlink()
    parsed = parse_for_check(voc=str(tmp_path), images=str(other))
    assert not parsed.missing_images and parsed.records[0].image_path == str(other / "im0.jpg")


def test_coco_download_layout_images_split_folders(tmp_path, files):
    for split in ("train", "val"):
        files.image(tmp_path / "images" / f"{split}2017" / "1.jpg", (20, 30))
        data = {"images": [{"id": 1, "file_name": "1.jpg", "height": 20, "width": 30}],
                "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]}],
                "categories": [{"id": 1, "name": "x"}]}  # fmt: skip
        (tmp_path / "annotations").mkdir(exist_ok=True)
        (tmp_path / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(data))
    val = build_dataset(str(tmp_path), "val")
    assert val.records[0].image_path == str(tmp_path / "images" / "val2017" / "1.jpg")
    assert len(build_dataset(str(tmp_path), "all")) == 2  # check-style: both jsons


def test_single_json_gets_a_logged_seeded_holdout(tmp_path, files, caplog):
    images = [{"id": i, "file_name": f"{i}.png", "height": 20, "width": 20} for i in range(1, 11)]
    for image in images:
        files.image(tmp_path / "images" / image["file_name"], (20, 20))
    anns = [{"id": i, "image_id": i, "category_id": 1, "bbox": [1, 1, 5, 5]} for i in range(1, 11)]
    path = str(files.coco(tmp_path, images, anns))
    with caplog.at_level(logging.INFO):
        train = build_dataset(path, "train", val_fraction=0.3)
        val = build_dataset(path, "val", val_fraction=0.3)
    assert [r.image_id for r in val.records] == [8, 9, 10]  # default: the last ids
    assert {r.image_id for r in train.records} == set(range(1, 8))
    assert "3 of 10 images held out for validation" in caplog.text
    seeded = [build_dataset(path, s, val_fraction=0.3, split_seed=4) for s in ("train", "val")]
    val_ids = {r.image_id for r in seeded[1].records}
    order = np.random.default_rng(4).permutation(10)  # holdout_split's draw, independently
    assert val_ids == {sorted(range(1, 11))[i] for i in order[-3:]}
    assert val_ids.isdisjoint(r.image_id for r in seeded[0].records)
    with pytest.raises(DatasetError, match="val_fraction"):
        build_dataset(path, "val", val_fraction=1.5)


def test_detector_says_what_it_looked_for(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(DatasetError, match=r"no dataset found .* --annotations"):
        build_dataset(str(tmp_path), "train")


def test_labelme_image_path_leaving_the_dataset_is_refused(tmp_path, files):
    root = tmp_path / "ds"
    files.image(root / "pics" / "a.jpg", (40, 60))
    files.image(tmp_path / "secret.jpg", (40, 60))  # beside the dataset, not in it
    square = [[2, 2], [20, 2], [20, 20], [2, 20]]
    _labelme(root / "json" / "a.json", [_shape("cat", square)])  # ../pics/a.jpg: inside
    _labelme(root / "json" / "b.json", [_shape("cat", square)], image="../../secret.jpg")
    dataset = build_dataset(str(root), "all")
    assert [r.file_name for r in dataset.records] == ["a.jpg"]
    [problem] = dataset.parsed.problems
    assert problem.kind == "outside_root" and problem.file.endswith("b.json")
    assert "'../../secret.jpg' leads outside the dataset folder" in problem.message
    followed = build_dataset(str(root), "all", allow_outside_root=True)
    assert [r.file_name for r in followed.records] == ["a.jpg", "secret.jpg"]
    # the same image name in the image folder given by --images is read instead
    files.image(root / "pics" / "b.jpg", (40, 60))
    found = build_dataset(str(root), "all", images=str(root / "pics"))
    assert [r.file_name for r in found.records] == ["a.jpg", "b.jpg"]
    assert found.parsed.problems == []


def test_yolo_list_entry_leaving_the_dataset_is_refused(tmp_path, files):
    root = tmp_path / "yolo"
    _yolo_image(root, "train", "t1", files, ["0 0.5 0.5 0.2 0.4"])
    files.image(tmp_path / "secret.jpg", (50, 100))
    (root / "train.txt").write_text("./images/train/t1.jpg\n../secret.jpg\n")
    (root / "data.yaml").write_text("train: train.txt\nval: train.txt\nnames: [cat]\n")
    dataset = build_dataset(str(root), "train", keep_empty=True)
    assert [r.file_name for r in dataset.records] == ["t1.jpg"]
    assert dataset.parsed.problem_counts() == {"outside_root": 1}
    followed = build_dataset(str(root), "train", keep_empty=True, allow_outside_root=True)
    assert [r.file_name for r in followed.records] == ["t1.jpg", "secret.jpg"]
