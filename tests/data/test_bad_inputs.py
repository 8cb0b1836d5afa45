"""Every problem of SPEC §1 gets its clear error or its documented, counted repair."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from rcnn.data import build_dataset, read_image
from rcnn.data.coco import load_coco
from rcnn.data.images import UnreadableImageError, load_image
from rcnn.data.voc import load_voc_folder
from rcnn.errors import DatasetError


def _image_entry(image_id, name, size=(40, 60)):
    return {"id": image_id, "file_name": name, "height": size[0], "width": size[1]}


def _ann(ann_id, category_id, bbox, segmentation, *, image_id=1, **extra):
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox,
            "segmentation": segmentation, **extra}  # fmt: skip


def test_missing_image_is_an_error_naming_the_file(tmp_path, files):
    files.image(tmp_path / "images" / "a.png")
    ann = files.coco(tmp_path, [_image_entry(1, "a.png"), _image_entry(2, "gone.png")], [])
    with pytest.raises(DatasetError, match=r"gone\.png"):
        build_dataset(str(ann), "val")
    with pytest.raises(DatasetError, match=r"gone\.png"):
        read_image(str(tmp_path / "images" / "gone.png"))


def test_no_image_folder_names_the_paths_tried(tmp_path, files):
    ann = files.coco(tmp_path, [_image_entry(1, "nowhere.png")], [])
    with pytest.raises(DatasetError, match=r"nowhere\.png.*tried .*images"):
        load_coco(str(ann))


def test_unparseable_json_is_a_dataset_error(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"images": [')
    with pytest.raises(DatasetError, match=r"broken\.json: not valid JSON"):
        load_coco(str(path))
    path.write_text('{"images": []}')
    with pytest.raises(DatasetError, match="annotations"):
        load_coco(str(path))


def test_truncated_image_raises_unreadable(tmp_path, files):
    path = files.image(tmp_path / "t.jpg", (64, 64))
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(UnreadableImageError, match=r"t\.jpg"):
        read_image(str(path))


@pytest.mark.parametrize(
    "mode,value,expected",
    [("L", 77, 77), ("RGBA", 90, 90), ("P", 5, None), ("I;16", 200, 200), ("LA", 33, 33)],
)
def test_non_rgb_modes_become_rgb(tmp_path, files, mode, value, expected):
    path = tmp_path / f"im_{mode.replace(';', '')}.png"
    files.image(path, (5, 7), mode=mode, value=value)
    image, info = load_image(str(path))
    assert image.shape == (3, 5, 7) and image.dtype == torch.uint8
    if expected is None:  # palette: the palette colour of index 5, as Pillow's convert gives it
        expected = Image.open(path).convert("RGB").getpixel((0, 0))
        assert image[:, 0, 0].tolist() == list(expected)
    else:
        assert (image == expected).all()
    assert info.notes and mode in info.notes[0]


def _exif_image(path, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    array = np.zeros((10, 20, 3), np.uint8)
    array[:, :5] = 255  # a white band on the left
    Image.fromarray(array).save(path, exif=exif)
    return path


def test_exif_orientation_is_applied_and_invalid_values_ignored(tmp_path):
    rotated, info = load_image(str(_exif_image(tmp_path / "r.png", 6)))
    assert rotated.shape == (3, 20, 10) and info.exif_applied  # 6: rotate 90 degrees clockwise
    assert rotated[:, :5].float().mean() > 200 and rotated[:, -5:].float().mean() < 50
    plain, info = load_image(str(_exif_image(tmp_path / "bad.png", 42)))
    assert plain.shape == (3, 10, 20) and not info.exif_applied
    assert "invalid EXIF orientation 42" in info.notes[0]
    # annotations made on the raw pixels (size 10x20): the raw pixels are kept
    raw, info = load_image(str(tmp_path / "r.png"), expected_size=(10, 20))
    assert raw.shape == (3, 10, 20)


def test_annotation_repairs_and_drops_are_reported(tmp_path, files):
    files.image(tmp_path / "images" / "a.png", (40, 60))
    sq = files.square
    anns = [
        _ann(1, 1, [50, 30, 20, 20], sq(50, 30, 20)),
        _ann(2, 1, [5, 5, 0, 10], sq(5, 5, 3)),
        _ann(3, 1, [5, 5, 10, 10], [[1, 2, 3, 4]]),
        _ann(4, 9, [5, 5, 10, 10], sq(5, 5, 10)),
        _ann(5, 2, [float("nan"), 5, 10, 10], sq(5, 5, 10)),
        _ann(5, 2, [5, 5, 10, 10], [*sq(5, 5, 10), [1, 1, 2, 2]], area=100),
        _ann(7, 1, [0, 0, 60, 40], {"size": [40, 60], "counts": [0, 2400]}, iscrowd=1),
        _ann(8, 1, [5, 5, 10, 10], sq(5, 5, 10), image_id=99),
    ]
    path = files.coco(tmp_path, [_image_entry(1, "a.png", (40, 60))], anns)
    parsed = load_coco(str(path))
    kinds = {(p.annotation, p.kind) for p in parsed.problems}
    assert kinds == {
        (1, "box_outside_image"),
        (2, "zero_area_box"),
        (3, "degenerate_polygon"),
        (4, "unknown_category"),
        (5, "nan_coordinates"),
        (5, "duplicate_id"),
        (5, "degenerate_polygon"),
        (8, "unknown_image"),
    }
    (record,) = parsed.records
    assert record.annotation_ids == [1, 5, 7]
    np.testing.assert_array_equal(record.boxes[0], [50, 30, 60, 40])  # clipped to 60x40
    assert record.labels.tolist() == [0, 1, 0] and record.ignore.tolist() == [False, False, True]
    assert len(record.masks[1]) == 1  # the 2-point polygon was dropped, the square kept
    assert record.masks[2]["size"] == [40, 60] and isinstance(record.masks[2]["counts"], bytes)


def test_skip_empty_counts_crowd_only_images_as_empty(tmp_path, files):
    for name in ("a.png", "b.png"):
        files.image(tmp_path / "images" / name)
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 1},
        {"id": 2, "image_id": 2, "category_id": 2, "bbox": [1, 1, 5, 5], "iscrowd": 0},
    ]
    path = files.coco(tmp_path, [_image_entry(1, "a.png"), _image_entry(2, "b.png")], anns)
    train = build_dataset(str(path), "train", val_fraction=0)  # no hold-out: every image
    val = build_dataset(str(path), "val", val_fraction=0)
    assert [r.image_id for r in train.records] == [2] and train.parsed.num_skipped_empty == 1
    assert [r.image_id for r in val.records] == [1, 2] and not val.has_masks
    _, targets = val[0]
    assert targets.ignore.tolist() == [True] and targets.masks is None


def test_json_nan_in_polygon_is_dropped(tmp_path, files):
    files.image(tmp_path / "images" / "a.png")
    seg = [[1, 1, float("nan"), 1, 5, 5]]
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4], "segmentation": seg}]
    path = files.coco(tmp_path, [_image_entry(1, "a.png")], anns)
    assert "NaN" in path.read_text()
    parsed = load_coco(str(path))
    assert [p.kind for p in parsed.problems] == ["degenerate_polygon"] and not parsed.records[
        0
    ].masks


def _voc_xml(objects, size=(40, 60), filename="a.png"):
    parts = [f"<annotation><filename>{filename}</filename>"]
    parts.append(f"<size><width>{size[1]}</width><height>{size[0]}</height><depth>3</depth></size>")
    for name, difficult, box in objects:
        coords = "".join(
            f"<{t}>{v}</{t}>" for t, v in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True)
        )
        parts.append(
            f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox>{coords}</bndbox></object>"
        )
    return "".join(parts) + "</annotation>"


def test_voc_difficult_is_ignore_and_broken_files_are_reported(tmp_path, files):
    (tmp_path / "annotations").mkdir()
    files.image(tmp_path / "images" / "a.png")
    files.image(tmp_path / "images" / "b.png")
    (tmp_path / "annotations" / "a.xml").write_text(
        _voc_xml([("dog", 0, (1, 1, 10, 10)), ("cat", 1, (5, 5, 70, 20)), ("cow", 0, (5, 3, 3, 9))])
    )
    (tmp_path / "annotations" / "b.xml").write_text(
        _voc_xml([("dog", 0, (1, 1, "x", 4))], filename="b.png")
    )
    (tmp_path / "annotations" / "c.xml").write_text("<annotation><object>")
    parsed = load_voc_folder(str(tmp_path), None)
    assert parsed.class_names == ["cat", "cow", "dog"]
    record = parsed.records[0]
    assert record.ignore.tolist() == [False, True]
    np.testing.assert_array_equal(record.boxes, [[0, 0, 10, 10], [4, 4, 60, 20]])
    kinds = sorted((p.file.rsplit("/", 1)[-1], p.kind) for p in parsed.problems)
    assert kinds == [("a.xml", "box_outside_image"), ("a.xml", "zero_area_box"),
                     ("b.xml", "bad_box"), ("c.xml", "bad_xml")]  # fmt: skip
    given = load_voc_folder(str(tmp_path), None, classes=["dog"])
    assert [p.kind for p in given.problems].count("unknown_category") == 2
    assert json.dumps([p.as_dict() for p in given.problems])  # serialisable for --json


def test_image_smaller_than_annotated_rescales_targets(tmp_path, files):
    files.image(tmp_path / "images" / "a.png", (20, 30))
    anns = [_ann(1, 1, [0, 0, 60, 40], files.square(0, 0, 40))]
    path = files.coco(tmp_path, [_image_entry(1, "a.png", (40, 60))], anns)
    image, targets = build_dataset(str(path), "val")[0]
    assert image.shape == (3, 20, 30) and targets.image_size == targets.orig_size == (20, 30)
    assert targets.boxes.tolist() == [[0.0, 0.0, 30.0, 20.0]]
    np.testing.assert_allclose(targets.masks[0][0], np.array(files.square(0, 0, 40)[0]) / 2)


def test_explicit_image_folder(tmp_path, files, capsys):
    from rcnn.cli import main

    files.image(tmp_path / "elsewhere" / "a.png")
    anns = [_ann(1, 1, [1, 1, 5, 5], files.square(1, 1, 4))]
    path = files.coco(tmp_path / "ann", [_image_entry(1, "a.png")], anns)
    assert main(["check", "--coco", str(path), "--images", str(tmp_path / "elsewhere")]) == 0
    assert "usable: yes" in capsys.readouterr().out
    assert main(["check", "--coco", str(path)]) == 1
    assert "a.png' not found; tried" in capsys.readouterr().err


def test_malformed_entries_are_reported_not_crashes(tmp_path, files):
    files.image(tmp_path / "images" / "a.png", (40, 60))
    files.image(tmp_path / "images" / "b.png", (40, 60))
    images = [
        {"id": 1, "file_name": "a.png", "height": 40.0, "width": 60.0},  # floats: fine
        {"id": 2, "file_name": "b.png", "height": float("nan"), "width": 60},  # read from file
        "not an image entry",
    ]
    anns = [
        _ann(1, 1, [1, 1, 5, 5], {"size": [40, 60], "counts": 17}),
        _ann(2, 1, [1, 1, 5, 5], {"counts": "abc"}),
        _ann(3, 1, "1,1,5,5", files.square(1, 1, 4)),
        _ann(4, 1, [1, 1, 5, 5], files.square(1, 1, 4), image_id=2),
    ]
    parsed = load_coco(str(files.coco(tmp_path, images, anns)))
    kinds = sorted((p.annotation, p.kind) for p in parsed.problems if p.annotation is not None)
    assert kinds == [(1, "bad_mask"), (2, "bad_mask"), (3, "bad_box")]
    assert sorted(p.kind for p in parsed.problems if p.annotation is None) == ["bad_image"] * 2
    assert [(r.image_id, r.height, r.width, len(r)) for r in parsed.records] == [
        (1, 40, 60, 0),
        (2, 40, 60, 1),
    ]
