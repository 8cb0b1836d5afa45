"""The two GluonCV tutorials ported to examples/: each runs end to end on the shared sample data.

Every script runs once (session fixtures in conftest.py) with tiny settings; the checks compare
what it prints and writes (``summary.json``, the PNGs) against values computed here from the
source files (xml, json, csv) and the resize / anchor formulas.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from PIL import Image

ROIS = 32  # --rois in conftest.TINY
VOC_HEADINGS = ["Dataset", "Data transform", "Data Loader", "Faster-RCNN Network",
                "Training losses", "RPN training targets", "RCNN training targets",
                "Training loop"]  # fmt: skip
COCO_HEADINGS = ["Dataset", "Data transform", "Data Loader", "Mask RCNN Network",
                 "Training losses", "Training targets", "Training loop"]  # fmt: skip


def expected_resize(height: int, width: int, short: int = 128, max_size: int = 192):
    """The transform's output size: short side to ``short``, long side <= ``max_size``, floored."""
    scale = min(short / min(height, width), max_size / max(height, width))
    return math.floor(height * scale), math.floor(width * scale)


def expected_anchors(arch: str, padded: tuple[int, int]) -> int:
    """Anchors of one padded image: FPN P2-P6 x 3 ratios, or C4 stride 16 x 15 (5 scales x 3)."""
    height, width = padded
    if arch == "c4":
        return (height // 16) * (width // 16) * 15
    # P2-P5 at strides 4..32 of a multiple of 32; P6 = P5 subsampled by 2 (ceil)
    grids = [(height // s, width // s) for s in (4, 8, 16, 32)]
    grids.append((math.ceil(height / 64), math.ceil(width / 64)))
    return 3 * sum(h * w for h, w in grids)


def assert_headings_in_order(stdout: str, headings: list[str]) -> None:
    positions = [stdout.find(f"\n# {title}\n") for title in headings]
    assert all(p >= 0 for p in positions), dict(zip(headings, positions, strict=True))
    assert positions == sorted(positions)


def assert_pictures(paths: list[str], names: list[str]) -> None:
    assert [p.rsplit("/", 1)[-1] for p in paths] == names
    for path in paths:
        with Image.open(path) as picture:
            picture.verify()
        with Image.open(path) as picture:
            low, high = picture.convert("L").getextrema()
            assert picture.width > 100 and picture.height > 100 and high - low > 50


def assert_loader_batches(entries: list[dict]) -> None:
    """4 batches of 2, each image resized by the transform, one orientation per batch."""
    assert len(entries) == 8
    for entry in entries:
        _, height, width = entry["image"]
        assert min(height, width) <= 128 and max(height, width) <= 192
        assert min(height, width) >= 127 or max(height, width) >= 191  # one side hits its limit
        assert entry["boxes"][0] >= 1 and entry["boxes"][1] == 4
    for first, second in zip(entries[::2], entries[1::2], strict=True):
        landscape = [e["image"][2] >= e["image"][1] for e in (first, second)]
        assert landscape[0] == landscape[1]  # aspect-ratio grouping


def assert_train_mode(summary: dict, num_classes: int) -> None:
    """The GluonCV train-mode outputs on the zero image: shapes from the anchor / RoI formulas."""
    _, height, width = summary["train_mode_image"]
    assert (height, width) == expected_resize(600, 800)
    padded = (math.ceil(height / 32) * 32, math.ceil(width / 32) * 32)
    anchors = expected_anchors(summary["arch"], padded)
    shapes = summary["train_mode"]
    assert shapes["anchors"] == [anchors, 4]
    assert shapes["rpn_logits"] == [1, anchors]
    assert shapes["rpn_deltas"] == [1, anchors, 4]
    assert shapes["rois"] == [[ROIS, 4]] and shapes["matched_gt"] == [[ROIS]]
    assert shapes["rcnn_cls_logits"] == [ROIS, num_classes + 1]
    assert shapes["rcnn_box_deltas"] == [ROIS, 4 * num_classes]
    assert shapes["rcnn_cls_targets"] == [ROIS]


def assert_targets(targets: dict, summary: dict) -> None:
    anchors = expected_anchors(summary["arch"], tuple(summary["padded_size"]))
    # computed in the loader (RPNTargetTransform) for the image alone, then used by the model
    assert targets["rpn cls label"] == [anchors]
    assert targets["rpn box label"] == targets["rpn box mask"] == [anchors, 4]
    assert summary["rpn_targets_used"]
    assert targets["rcnn cls label"] == [ROIS]
    assert targets["rcnn box label"] == targets["rcnn box mask"] == [ROIS, 4]
    assert targets["label"] == [targets["box"][0]]
    assert 1 <= summary["rcnn_num_pos"] <= ROIS // 4  # ground truth joins the proposals; 25% cap


def assert_training(summary: dict, stdout: str) -> None:
    steps = summary["steps"]
    assert len(steps) == 2 and summary["losses_finite"]
    for step in steps:
        assert step["by_hand_equal"], step  # losses recomputed from the intermediates
        assert all(math.isfinite(v) and v >= 0 for k, v in step.items() if k.startswith("loss"))
        assert 0 < step["rpn_num_pos"] + step["rpn_num_neg"] <= 256 and step["rpn_num_pos"] <= 128
    assert summary["params_updated"] == summary["params_trainable"] > 0
    assert math.isfinite(summary["loss_after"])
    assert f"loss on the last batch after 2 step(s): {summary['loss_after']:.4f}" in stdout


def test_faster_rcnn_voc_tutorial(voc_run, raccoon):
    summary, stdout = voc_run.summary, voc_run.stdout
    assert_headings_in_order(stdout, VOC_HEADINGS)
    # Dataset: the raccoon folder's split lists (distinct file names)
    for key, split in (("num_train", "train"), ("num_val", "test")):
        with open(raccoon / "splits" / f"{split}_labels.csv", newline="") as handle:
            files = {row["filename"] for row in csv.DictReader(handle)}
        assert summary[key] == len(files)
    assert f"Training images: {summary['num_train']}\n" in stdout
    assert summary["class_names"] == ["raccoon"]
    # Data transform: the sample against its xml and image file
    sample = summary["sample"]
    root = ET.parse(raccoon / "annotations" / sample["file"].replace(".jpg", ".xml")).getroot()
    num_objects = len(root.findall("object"))
    assert sample["boxes"] == [num_objects, 4] and sample["labels"] == [num_objects]
    with Image.open(raccoon / "images" / sample["file"]) as image:
        assert sample["image"] == [3, image.height, image.width]
    assert summary["transformed"]["image"] == [3, *expected_resize(*sample["image"][1:])]
    assert summary["transformed"]["boxes"] == [num_objects, 4]
    assert_pictures(summary["pictures"],
                    ["train_sample.png", "val_sample.png", "train_transformed.png"])  # fmt: skip
    assert_loader_batches(summary["loader"])
    assert summary["val_batches"] == math.ceil(summary["num_val"] / 2)
    # Network: print(model) cut to 20 lines; inference on the zero image
    assert summary["model_lines"] > 20 and "more lines; --model-lines 0 prints all" in stdout
    num = summary["inference"]["scores"][0]
    assert summary["inference"] == {"labels": [num], "scores": [num], "boxes": [num, 4]}
    assert num <= ROIS  # one class, at most --rois proposals at test time
    assert_train_mode(summary, num_classes=1)
    assert_targets(summary["rpn_targets"] | summary["rcnn_targets"], summary)
    assert_training(summary, stdout)


def polygon_pixels(segmentation: list, height: int, width: int) -> int:
    """Pixels inside an instance's polygons (pycocotools, as ``annToMask``)."""
    rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    return int(mask_utils.decode(rle).sum())


def test_mask_rcnn_coco_tutorial(coco_run, balloon):
    summary, stdout = coco_run.summary, coco_run.stdout
    assert_headings_in_order(stdout, COCO_HEADINGS)
    # Dataset: train skips images without objects, val keeps all
    train = json.loads((balloon / "annotations" / "custom_train.json").read_text())
    val = json.loads((balloon / "annotations" / "custom_val.json").read_text())
    assert summary["num_train"] == len({a["image_id"] for a in train["annotations"]})
    assert summary["num_val"] == len(val["images"])
    # Data transform: the sample against its json entry and polygons
    sample = summary["sample"]
    (entry,) = [i for i in train["images"] if i["file_name"] == sample["file"]]
    anns = [a for a in train["annotations"] if a["image_id"] == entry["id"]]
    assert sample["image"] == [3, entry["height"], entry["width"]]
    assert sample["boxes"] == [len(anns), 4]
    assert sample["polygons"] == [len(a["segmentation"]) for a in anns]
    pixels = sum(polygon_pixels(a["segmentation"], entry["height"], entry["width"]) for a in anns)
    assert sample["mask_pixels"] == pixels
    size = expected_resize(entry["height"], entry["width"])
    assert summary["transformed"]["image"] == [3, *size]
    assert summary["transformed"]["masks"] == [len(anns), *size]
    names = ["train_sample_boxes.png", "train_sample_masks.png", "train_transformed_masks.png"]
    assert_pictures(summary["pictures"], names)
    assert_loader_batches(summary["loader"])
    assert all(e["masks"] == e["boxes"][0] for e in summary["loader"])
    # Network: inference returns full-resolution masks of the raw 600x800 image
    num = summary["inference"]["scores"][0]
    assert summary["inference"]["masks"] == [num, 600, 800] and num <= ROIS
    assert_train_mode(summary, num_classes=1)
    # Targets: RPN / RCNN as for Faster R-CNN, mask targets [P, M, M] 0/1 for the P positives
    targets = summary["targets"]
    assert_targets(targets, summary)
    mask_size = summary["mask_size"]
    assert mask_size == (14 if summary["arch"] == "c4" else 28)
    assert targets["rcnn mask label"] == [summary["rcnn_num_pos"], mask_size, mask_size]
    assert set(summary["mask_target_values"]) <= {0.0, 1.0}
    assert_training(summary, stdout)
    assert all(np.isfinite(s["loss_mask"]) for s in summary["steps"])
    assert summary["steps"][0]["lr"] == pytest.approx(0.00125 / 3)  # GluonCV's warmup starts at 1/3


def test_missing_dataset_is_one_line_error(tmp_path):
    """A wrong --data-root ends with the dataset error naming the path, not a traceback."""
    script = Path(__file__).resolve().parents[2] / "examples" / "train_faster_rcnn_voc.py"
    missing = tmp_path / "no_such_dataset"
    proc = subprocess.run(
        [sys.executable, str(script), "--data-root", str(missing), "--output", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"error: {missing}") and "Traceback" not in proc.stderr
