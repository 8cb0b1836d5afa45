"""`rcnn predict` with a fake model on real photos: overlays, results json, batching, bad inputs."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_util

from rcnn.cli import main
from rcnn.structures import Detections

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
FRUITS = DATA / "fruits_nuts" / "images"
BOX = (10, 20, 110, 220)  # x1, y1, x2, y2


class FakeMaskModel(torch.nn.Module):
    """Per image: a "fig" at BOX (score 0.9, mask = the box) and a "date" at 0.3."""

    def __init__(self) -> None:
        super().__init__()
        self.class_names = ["date", "fig", "hazelnut"]
        self.has_mask = True
        self.batch_sizes: list[int] = []

    def forward(self, images):
        assert not self.training
        self.batch_sizes.append(len(images))
        out = []
        for image in images:
            h, w = image.shape[-2:]
            masks = torch.zeros(2, h, w, dtype=torch.bool)
            masks[0, BOX[1] : BOX[3], BOX[0] : BOX[2]] = True
            masks[1, :50, :50] = True
            out.append(
                Detections(
                    boxes=torch.tensor([BOX, (0, 0, 50, 50)], dtype=torch.float32),
                    scores=torch.tensor([0.9, 0.3]),
                    labels=torch.tensor([1, 0]),
                    masks=masks,
                )
            )
        return out


@pytest.fixture
def fake_model(monkeypatch):
    model = FakeMaskModel()
    calls = []

    def load_model(path, *, device="cpu"):
        calls.append((path, device))
        return model

    monkeypatch.setattr("rcnn.engine.checkpoint.load_model", load_model)
    model.load_calls = calls
    return model


@pytest.fixture
def inputs(tmp_path):
    for folder, names in {"imgs": ["0.jpg", "1.jpg"], "other": ["2.jpg"], "g": ["3.jpg"]}.items():
        (tmp_path / folder).mkdir()
        for name in names:
            shutil.copy(FRUITS / name, tmp_path / folder / name)
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return tmp_path


def test_predict_writes_overlays_and_results(inputs, fake_model, caplog, capsys):
    out = inputs / "out"
    args = [str(inputs / "imgs"), str(inputs / "other" / "2.jpg"), str(inputs / "g" / "*.jpg")]
    with caplog.at_level(logging.WARNING):
        code = main(["predict", *args, "--checkpoint", "m.pt", "--output", str(out),
                     "--batch-size", "2", "--device", "cpu"])  # fmt: skip
    assert code == 0
    assert fake_model.load_calls == [("m.pt", "cpu")]
    assert fake_model.batch_sizes == [2, 1, 1]  # [0, 1], [broken, 2] -> [2], [3]
    assert "broken.jpg" in caplog.text
    assert "1 unreadable skipped" in capsys.readouterr().out
    images = json.loads((out / "images.json").read_text())
    assert [Path(i["file_name"]).name for i in images] == ["0.jpg", "1.jpg", "2.jpg", "3.jpg"]
    results = json.loads((out / "results.json").read_text())
    assert len(results) == 4  # the 0.3 detections are below --threshold 0.5
    for image_id, result in enumerate(results):
        assert result["image_id"] == image_id
        assert result["category_id"] == 2  # label 1 + 1
        assert result["bbox"] == [10.0, 20.0, 100.0, 200.0]
        assert result["score"] == pytest.approx(0.9)
        assert mask_util.decode(result["segmentation"]).sum() == 100 * 200
    original = np.asarray(Image.open(FRUITS / "0.jpg").convert("RGB")).astype(int)
    overlay = np.asarray(Image.open(out / "0.png").convert("RGB")).astype(int)
    assert overlay.shape == original.shape
    assert np.abs(overlay[120, 60] - original[120, 60]).sum() > 20  # tinted by the mask
    assert np.abs(overlay[400:, 300:] - original[400:, 300:]).max() <= 1  # untouched
    assert (out / "3.png").is_file()


def test_predict_bad_inputs(inputs, fake_model, capsys):
    out = str(inputs / "out")
    assert (
        main(["predict", str(inputs / "nothing*.jpg"), "--checkpoint", "m", "--output", out]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "nothing*.jpg" in err and "no such file" in err
    assert main(["predict", str(inputs / "imgs"), "--output", out]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    broken = str(inputs / "imgs" / "broken.jpg")
    assert main(["predict", broken, "--checkpoint", "m", "--output", out]) == 2
    assert "none of the 1 input images could be read" in capsys.readouterr().err


def test_predict_torchvision_weights_from_the_hub_cache(inputs, tmp_path, capsys, monkeypatch):
    """``--torchvision NAME`` without ``--weights`` reads torchvision's COCO_V1 file from the torch
    hub cache; when it is missing, the one-line error names the file and where to put it."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    args = ["predict", str(inputs / "imgs"), "--torchvision", "maskrcnn_resnet50_fpn"]
    assert main([*args, "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    expected = tmp_path / "hub" / "checkpoints" / "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth"
    assert str(expected) in err and "https://download.pytorch.org/models/" in err
