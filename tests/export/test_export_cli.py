"""`rcnn export` and `rcnn predict --onnx` from the command line, and their bad inputs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from onnx_models import DATA
from PIL import Image
from pycocotools import mask as mask_util
from torchvision.models import detection

from rcnn.cli import main
from rcnn.export.runtime import OnnxDetector

SOURCES = [DATA / "fruits_nuts" / "images" / f"{i}.jpg" for i in (0, 1)]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list:
    """Two fruits_nuts photos at 300 x 400 (full-size masks of 100 detections cost time)."""
    folder = tmp_path_factory.mktemp("photos")
    paths = [folder / path.name for path in SOURCES]
    for source, path in zip(SOURCES, paths, strict=True):
        Image.open(source).convert("RGB").resize((400, 300)).save(path, quality=95)
    return paths


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


def test_export_reports_the_file(exported):
    assert f"wrote {exported.onnx}" in exported.export_output
    assert "3 classes, masks" in exported.export_output
    meta = {p.key: p.value for p in onnx.load(str(exported.onnx)).metadata_props}
    assert meta["preset"] == "tiny_fpn"  # the checkpoint's network


def _predict(tmp_path, photos, name: str, model_args: list[str], capsys):
    out = tmp_path / name
    args = ["predict", *map(str, photos), "--output", str(out), "--threshold", "0.3"]
    assert main([*args, *model_args, "--batch-size", "2"]) == 0
    assert "2 images" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    overlays = [np.asarray(Image.open(out / f"{p.stem}.png")).astype(int) for p in photos]
    return results, overlays


def test_predict_onnx_gives_the_checkpoints_results(exported, photos, tmp_path, capsys):
    """Same results json (boxes 1 px, scores 1e-3, mask IoU 0.95) and overlays as --checkpoint."""
    onnx_args = ["--onnx", str(exported.onnx)]
    ours, our_pictures = _predict(tmp_path, photos, "onnx", onnx_args, capsys)
    ckpt_args = ["--checkpoint", str(exported.checkpoint), "--device", "cpu"]
    ref, ref_pictures = _predict(tmp_path, photos, "ckpt", ckpt_args, capsys)
    assert len(ours) == len(ref) >= 4
    for a, b in zip(ours, ref, strict=True):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        assert np.abs(np.subtract(a["bbox"], b["bbox"])).max() <= 1.0
        assert abs(a["score"] - b["score"]) <= 1e-3
        iou = mask_util.iou([a["segmentation"]], [b["segmentation"]], [0])[0, 0]
        assert iou >= 0.95
    for a, b in zip(our_pictures, ref_pictures, strict=True):
        assert a.shape == b.shape
        assert np.abs(a - b).mean() < 0.5  # the same drawing but for a few edge pixels


def _foreign_onnx(path, *, metadata: bool = False) -> None:
    """A valid ONNX model that is no detector (one Add), or one with our I/O but no metadata."""
    if metadata:
        inputs = [helper.make_tensor_value_info("images", TensorProto.UINT8, ["b", 3, "h", "w"])]
        names = ["boxes", "scores", "labels", "num_detections"]
        outputs = [helper.make_tensor_value_info(n, TensorProto.UINT8, None) for n in names]
        nodes = [helper.make_node("Identity", ["images"], [n]) for n in names]
    else:
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])]
        outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]
        nodes = [helper.make_node("Add", ["x", "x"], ["y"])]
    graph = helper.make_graph(nodes, "foreign", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_onnx_bad_files(photos, tmp_path, capsys):
    """Missing, not ONNX, an ONNX file from elsewhere, one without metadata: one line each."""
    photo = str(photos[0])
    base = ["predict", photo, "--output", str(tmp_path / "out"), "--onnx"]
    assert main([*base, str(tmp_path / "missing.onnx")]) == 2
    assert "missing.onnx: no such ONNX file" in one_line_error(capsys)
    (tmp_path / "text.onnx").write_text("not a model\n")
    assert main([*base, str(tmp_path / "text.onnx")]) == 2
    assert "text.onnx: not a readable ONNX model" in one_line_error(capsys)
    _foreign_onnx(tmp_path / "add.onnx")
    assert main([*base, str(tmp_path / "add.onnx")]) == 2
    err = one_line_error(capsys)
    assert "not an rcnn ONNX detector" in err and "input 'images'" in err
    assert "'boxes', 'scores', 'labels', 'num_detections'" in err
    _foreign_onnx(tmp_path / "nometa.onnx", metadata=True)
    assert main([*base, str(tmp_path / "nometa.onnx")]) == 2
    err = one_line_error(capsys)
    assert "metadata 'classes'" in err and "outputs" not in err


def test_export_and_predict_option_errors(exported, photos, tmp_path, capsys):
    missing = tmp_path / "none.pth"
    assert main(["export", "--checkpoint", str(missing), "--output", str(tmp_path / "m.onnx")]) == 2
    assert "none.pth does not exist" in one_line_error(capsys)
    (tmp_path / "empty.pth").write_bytes(b"")
    bad = ["export", "--checkpoint", str(tmp_path / "empty.pth"), "--output", "x.onnx"]
    assert main(bad) == 2
    assert "empty.pth is empty" in one_line_error(capsys)
    no_dir = str(tmp_path / "no" / "m.onnx")
    assert main(["export", "--checkpoint", str(exported.checkpoint), "--output", no_dir]) == 2
    assert "does not exist" in one_line_error(capsys)
    both = ["predict", str(photos[0]), "--output", str(tmp_path / "o"), "--onnx"]
    assert main([*both, str(exported.onnx), "--checkpoint", str(exported.checkpoint)]) == 2
    assert "not both" in one_line_error(capsys)
    copy = str(shutil.copy(exported.onnx, tmp_path / "copy.onnx"))
    assert main(["predict", str(photos[0]), "--output", str(tmp_path / "o"), "--onnx", copy]) == 0


@pytest.mark.parametrize("opset", [11])
def test_export_old_opset_refused(exported, tmp_path, capsys, opset):
    args = ["export", "--checkpoint", str(exported.checkpoint), "--output", str(tmp_path / "m")]
    assert main([*args, "--opset", str(opset)]) == 2
    assert "--opset 11" in one_line_error(capsys)


def test_export_torchvision_weights_file(tmp_path, capsys):
    """``rcnn export --torchvision NAME --weights FILE``: torchvision's own builder, seeded
    random weights with a 2-class head saved by the test (no download); a missing file is one
    line. R50-FPN: about 25 s of tracing on 2 cores."""
    missing = ["export", "--torchvision", "fasterrcnn_resnet50_fpn", "--weights"]
    assert main([*missing, str(tmp_path / "none.pth"), "--output", str(tmp_path / "x.onnx")]) == 2
    assert "none.pth" in one_line_error(capsys)
    torch.manual_seed(0)
    builder = detection.fasterrcnn_resnet50_fpn
    weights = tmp_path / "tv.pth"
    torch.save(builder(weights=None, weights_backbone=None, num_classes=3).state_dict(), weights)
    output = tmp_path / "tv.onnx"
    args = ["export", "--torchvision", "fasterrcnn_resnet50_fpn", "--weights", str(weights)]
    assert main([*args, "--output", str(output)]) == 0
    assert f"wrote {output}" in capsys.readouterr().out
    detector = OnnxDetector(output, threads=2)
    assert detector.preset == "fasterrcnn_resnet50_fpn" and not detector.has_mask
    assert detector.class_names == ["class_1", "class_2"]
    image = torch.from_numpy(np.asarray(Image.open(SOURCES[0]).convert("RGB").resize((80, 60))))
    (found,) = detector([image.permute(2, 0, 1).contiguous()])  # enlarged to 800 in the graph
    assert 0 < len(found.scores) <= 100 and found.masks is None
    assert (found.boxes >= 0).all() and (found.boxes[:, 2] <= 80).all()
    assert (found.boxes[:, 3] <= 60).all() and found.labels.max() <= 1
