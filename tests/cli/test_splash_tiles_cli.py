"""``rcnn predict --splash`` (image and folder), ``--tile/--overlap`` in predict and eval, with a
fake model that finds bright squares by their pixels (so the true answer is known)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from rcnn.cli import main
from rcnn.structures import Detections


class SquareFinder(torch.nn.Module):
    """Detects the pixels whose red value is v > 0 as one "thing" per value v (exact masks);
    records the sizes of the images it is given."""

    def __init__(self, has_mask: bool = True) -> None:
        super().__init__()
        self.class_names = ["thing"]
        self.has_mask = has_mask
        self.sizes: list[tuple[int, int]] = []

    def forward(self, images):
        out = []
        for image in images:
            self.sizes.append(tuple(image.shape[-2:]))
            values = [v for v in image[0].unique().tolist() if v > 0]
            masks = torch.stack([image[0] == v for v in values]) if values else None
            boxes = []
            for mask in masks if masks is not None else []:
                ys, xs = mask.nonzero(as_tuple=True)
                boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            count = len(values)
            if masks is None:
                masks = torch.zeros(0, *image.shape[-2:], dtype=torch.bool)
            out.append(Detections(
                torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.full((count,), 0.9),
                torch.zeros(count, dtype=torch.int64), masks if self.has_mask else None,
            ))  # fmt: skip
        return out


@pytest.fixture
def finder(monkeypatch):
    model = SquareFinder()
    monkeypatch.setattr("rcnn.engine.checkpoint.load_model", lambda path, device="cpu": model)
    return model


def _photo(path, size=(120, 160)):
    """A colourful image with one object (red value 200 inside rows 30..69, columns 40..99)."""
    rng = np.random.default_rng(0)
    array = rng.integers(0, 150, (*size, 3), dtype=np.uint8)
    array[..., 0] = 0
    array[30:70, 40:100, 0] = 200
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return array


def test_splash_keeps_instances_in_colour_over_gray(tmp_path, finder, capsys):
    array = _photo(tmp_path / "in" / "a.png")
    _photo(tmp_path / "in" / "b.png")
    for inputs in ([str(tmp_path / "in" / "a.png")], [str(tmp_path / "in")]):
        out = tmp_path / f"out{len(inputs[0])}"
        assert main(["predict", *inputs, "--checkpoint", "m", "--output", str(out),
                     "--splash"]) == 0  # fmt: skip
        splash = np.asarray(Image.open(out / "a.png").convert("RGB"))
        gray = np.asarray(Image.fromarray(array).convert("L"))
        assert np.array_equal(splash[30:70, 40:100], array[30:70, 40:100])  # in colour
        outside = splash[80:, :]
        assert np.array_equal(outside[..., 0], gray[80:]) and np.array_equal(
            outside[..., 1], outside[..., 2]
        )
    assert (tmp_path / f"out{len(str(tmp_path / 'in'))}" / "b.png").is_file()


def test_splash_needs_a_mask_model(tmp_path, monkeypatch, capsys):
    model = SquareFinder(has_mask=False)
    monkeypatch.setattr("rcnn.engine.checkpoint.load_model", lambda path, device="cpu": model)
    _photo(tmp_path / "a.png")
    code = main(["predict", str(tmp_path / "a.png"), "--checkpoint", "m", "--output",
                 str(tmp_path / "out"), "--splash"])  # fmt: skip
    assert code == 2 and "--splash needs a model that predicts masks" in capsys.readouterr().err


def test_predict_tiles_merge_back_to_image_coordinates(tmp_path, finder, capsys):
    image = np.zeros((600, 800, 3), dtype=np.uint8)
    image[400:440, 500:540, 0] = 77
    Image.fromarray(image).save(tmp_path / "big.png")
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "big.png"), "--checkpoint", "m", "--output", str(out),
                 "--tile", "256", "--overlap", "0.25"]) == 0  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    assert len(results) == 1 and results[0]["bbox"] == [500.0, 400.0, 40.0, 40.0]
    assert (600, 800) in finder.sizes and (256, 256) in finder.sizes
    assert main(["predict", str(tmp_path / "big.png"), "--checkpoint", "m", "--output", str(out),
                 "--tile", "8"]) == 2  # fmt: skip
    assert "--tile must be >= 32" in capsys.readouterr().err


def test_eval_with_tiles_scores_the_merged_detections(tmp_path, finder, capsys):
    images, anns = [], []
    for index in range(2):
        array = np.zeros((300, 400, 3), dtype=np.uint8)
        for k, (x, y) in enumerate([(20, 30), (300, 200), (150 + index * 10, 120)]):
            array[y : y + 20, x : x + 30, 0] = 10 + k
            anns.append({"id": len(anns) + 1, "image_id": index + 1, "category_id": 1,
                         "bbox": [x, y, 30, 20], "area": 600, "iscrowd": 0})  # fmt: skip
        Image.fromarray(array).save(tmp_path / f"{index}.png")
        images.append({"id": index + 1, "file_name": f"{index}.png", "height": 300, "width": 400})
    categories = [{"id": 1, "name": "thing"}]
    data = {"images": images, "annotations": anns, "categories": categories}
    (tmp_path / "gt.json").write_text(json.dumps(data))
    finder.has_mask = False
    code = main(["eval", "--checkpoint", "m", "--dataset", str(tmp_path / "gt.json"), "--split",
                 "all", "--tile", "128", "--overlap", "0.3", "--json"])  # fmt: skip
    assert code == 0
    assert json.loads(capsys.readouterr().out)["bbox"]["AP"] == pytest.approx(1.0)
    assert (128, 128) in finder.sizes
