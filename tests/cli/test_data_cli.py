"""The dataset options on the command line, and the data defects of issue 13, each with its test:
``check --dataset`` on any format, ``check --voc X --images Y``, area tolerance, results-mode
``--max-images``, VOC results ids, ``--sync-bn`` on the CPU under torchrun."""

from __future__ import annotations

import json
import logging

import pytest
from PIL import Image

from rcnn.cli import main
from rcnn.cli.train import config_from_args as resolve_config


def _image(path, size=(40, 60), value=120):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size[1], size[0]), (value, value, value)).save(path)


def _labelme_folder(root):
    for name in ("a", "b"):
        _image(root / f"{name}.jpg")
        shapes = [{"label": "cat", "points": [[2, 2], [20, 2], [2, 20]], "group_id": None,
                   "shape_type": "polygon", "flags": {}}]  # fmt: skip
        data = {"version": "5.2.1", "shapes": shapes, "imagePath": f"{name}.jpg",
                "imageHeight": 40, "imageWidth": 60}  # fmt: skip
        (root / f"{name}.json").write_text(json.dumps(data))


def test_check_dataset_reads_labelme_keeps_report_keys_and_shows(tmp_path, capsys):
    _labelme_folder(tmp_path / "lm")
    out = tmp_path / "pictures"
    code = main(["check", "--dataset", str(tmp_path / "lm"), "--json", "--show", "1",
                 "--out", str(out)])  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    for key in ("images", "instances", "ignored", "empty_images", "has_masks", "classes",
                "problems"):  # fmt: skip
        assert key in report
    assert report["images"] == 2 and report["instances"] == 2 and report["classes"] == {"cat": 2}
    assert report["has_masks"] and report["problems"] == []
    assert len(list(out.glob("*.png"))) == 1


def test_check_voc_honours_images(tmp_path, capsys):
    (tmp_path / "voc" / "annots").mkdir(parents=True)
    box = "<bndbox><xmin>2</xmin><ymin>3</ymin><xmax>20</xmax><ymax>15</ymax></bndbox>"
    for index in range(3):
        _image(tmp_path / "photos" / f"x{index}.jpg", (24, 32))
        (tmp_path / "voc" / "annots" / f"x{index}.xml").write_text(
            f"<annotation><filename>x{index}.jpg</filename><object><name>b</name>{box}</object>"
            "<size><width>32</width><height>24</height></size></annotation>"
        )
    code = main(["check", "--voc", str(tmp_path / "voc"), "--images", str(tmp_path / "photos"),
                 "--json"])  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["images"] == 3 and report["problems"] == []


def _coco(path, stated_area, polygon):
    data = {"images": [{"id": 1, "file_name": "a.png", "height": 40, "width": 40}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [polygon],
                             "area": stated_area, "bbox": [5, 5, 20, 20], "iscrowd": 0}],
            "categories": [{"id": 1, "name": "x"}]}  # fmt: skip
    path.write_text(json.dumps(data))


def test_check_area_tolerance_matches_evaluation(tmp_path, capsys):
    _image(tmp_path / "a.png", (40, 40))
    polygon = [5, 5, 25, 5, 25, 25, 5, 25]  # pycocotools rasterises 400 pixels... or close
    from pycocotools import mask as mask_util

    true = float(mask_util.area(mask_util.frPyObjects([polygon], 40, 40))[0])
    for stated, reported in ((true * 1.03, False), (true * 1.08, True)):
        _coco(tmp_path / "ann.json", stated, polygon)
        main(["check", "--coco", str(tmp_path / "ann.json"), "--json"])
        kinds = json.loads(capsys.readouterr().out)["problems_by_kind"]
        assert ("area_mismatch" in kinds) is reported, (stated, true)


def _gt(path, count):
    images = [{"id": i, "file_name": f"{i}.png", "height": 50, "width": 50}
              for i in range(1, count + 1)]  # fmt: skip
    anns = [{"id": i, "image_id": i, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400,
             "iscrowd": 0} for i in range(1, count + 1)]  # fmt: skip
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": 1, "name": "x"}]}))  # fmt: skip


def test_results_mode_honours_max_images(tmp_path, capsys, caplog):
    _gt(tmp_path / "gt.json", 4)
    results = [{"image_id": i, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9}
               for i in (1, 2)]  # fmt: skip
    (tmp_path / "dets.json").write_text(json.dumps(results))
    base = ["eval", "--results", str(tmp_path / "dets.json"), "--coco", str(tmp_path / "gt.json"),
            "--json"]  # fmt: skip
    with caplog.at_level(logging.INFO):
        assert main([*base, "--max-images", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["bbox"]["AP"] == pytest.approx(1.0)
    assert "--max-images 2: scoring the first 2 images" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main(base) == 0
    # every image: the two without detections halve the recall (AP ~0.5) and a warning says why
    assert json.loads(capsys.readouterr().out)["bbox"]["AP"] == pytest.approx(0.5, abs=0.01)
    assert "names 2 of the 4 images" in caplog.text
    assert main([*base, "--max-images", "-1"]) == 2
    assert "--max-images must be >= 0" in capsys.readouterr().err


def test_voc_results_name_numeric_stems(tmp_path, capsys):
    """VOC's ``000005.jpg`` is image 5: results saying image_id 5 mean that file, not the fifth
    record (here the files are 000002, 000005 and 000009)."""
    root = tmp_path / "voc"
    (root / "Annotations").mkdir(parents=True)
    boxes = {"000002": (2, 2, 10, 10), "000005": (20, 20, 40, 40), "000009": (5, 30, 25, 45)}
    for stem, (x1, y1, x2, y2) in boxes.items():
        _image(root / "JPEGImages" / f"{stem}.jpg", (50, 50))
        (root / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><filename>{stem}.jpg</filename><size><width>50</width><height>50"
            f"</height></size><object><name>b</name><bndbox><xmin>{x1 + 1}</xmin><ymin>{y1 + 1}"
            f"</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object></annotation>"
        )
    results = [
        {"image_id": int(stem), "category_id": 1, "score": 0.9, "bbox": [x1, y1, x2 - x1, y2 - y1]}
        for stem, (x1, y1, x2, y2) in boxes.items()
    ]
    results.append({"image_id": "000002", "category_id": 1, "score": 0.8, "bbox": [2, 2, 8, 8]})
    (tmp_path / "dets.json").write_text(json.dumps(results))
    args = ["eval", "--results", str(tmp_path / "dets.json"), "--voc", str(root), "--split",
            "all", "--json"]  # fmt: skip
    assert main(args) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["voc07"]["mAP"] == pytest.approx(1.0)


def test_sync_bn_on_cpu_under_torchrun_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    code = main(["train", "--sync-bn", "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("rcnn train: error: --sync-bn needs GPUs")
    assert not (tmp_path / "run").exists()


def test_train_flags_become_dataset_options(tmp_path):
    from rcnn.cli import build_parser

    argv = ["train", "--dataset", str(tmp_path), "--images", str(tmp_path), "--keep-empty",
            "--val-fraction", "0.25", "--split-seed", "3", "--format", "voc"]  # fmt: skip
    cfg, _ = resolve_config(build_parser().parse_args(argv))
    expected = {"images": str(tmp_path), "keep_empty": True, "val_fraction": 0.25,
                "split_seed": 3, "format": "voc"}  # fmt: skip
    assert cfg.dataset_options == expected
