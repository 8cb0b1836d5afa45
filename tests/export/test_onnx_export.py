"""ONNX export checked by onnxruntime against the PyTorch model, on real photos.

One small Mask R-CNN (ResNet-18 FPN) and one C4 Faster R-CNN are exported once per module; every
test runs the file in onnxruntime and compares with ``model(images)``: same number of detections
and labels, boxes within 1 px, scores within 1e-3, mask IoU >= 0.95.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx_models import (
    BALLOON,
    CLASSES,
    FRUITS,
    RACCOON,
    assert_same,
    photo,
    tiny_model,
)

from rcnn.export.compare import torch_mask_probs
from rcnn.export.graph import ExportableRCNN
from rcnn.export.onnx import export_onnx
from rcnn.export.proposals import resized_size, shape_of
from rcnn.export.runtime import OnnxDetector
from rcnn.models import rcnn as eager


@pytest.fixture(scope="module")
def mask_fpn(exported):
    """The session's model, exported by `rcnn export --checkpoint` (conftest.py)."""
    return exported.model, exported.onnx


@pytest.fixture(scope="module")
def faster_c4(tmp_path_factory):
    model = tiny_model(mask=False, arch="c4")
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "c4.onnx", preset="tiny_c4")
    return model, path


def run_both(model, path, images: list[torch.Tensor]):
    with torch.no_grad():
        ref = model(images)
    return OnnxDetector(path, threads=2)(images), ref


@pytest.mark.parametrize("size", [(300, 400), (330, 250), (96, 128), (100, 75)])
def test_mask_fpn_matches_pytorch_batch_1_and_2(mask_fpn, size):
    """Two photos of one size: each alone (batch 1) and together (batch 2); two sizes the graph
    shrinks to the 128 px test size and two it enlarges (x1.25, x1.6: test_resize.py)."""
    model, path = mask_fpn
    images = [photo(FRUITS, size), photo(BALLOON, size)]
    detector = OnnxDetector(path, threads=2)
    with torch.no_grad():
        refs = model(images)
    together = detector(images)  # equal sizes: one run with B = 2
    for image, ref, batched in zip(images, refs, together, strict=True):
        (alone,) = detector([image])
        probs = torch_mask_probs(model, image)  # to tell a moved paste window (onnx_models.py)
        assert_same(alone, ref, probs)
        assert_same(batched, ref, probs)
    assert together[0].masks.shape[-2:] == size


def test_c4_faster_matches_pytorch(faster_c4):
    model, path = faster_c4
    images = [photo(RACCOON, (256, 192)), photo(RACCOON, (256, 192)).flip(-1)]
    ours, refs = run_both(model, path, images)
    for one, ref in zip(ours, refs, strict=True):
        assert_same(one, ref)


def test_eager_graph_is_the_model(mask_fpn):
    """The exportable forward in PyTorch gives ``model(images)`` exactly, padded to K rows."""
    model, _ = mask_fpn
    image = photo(BALLOON, (210, 280))
    with torch.no_grad():
        boxes, scores, labels, counts, masks = ExportableRCNN(model)(image[None])
        (ref,) = model([image])
    count = int(counts[0])
    assert count == len(ref.scores) and boxes.shape[1] == 100
    assert torch.equal(boxes[0, :count], ref.boxes) and torch.equal(scores[0, :count], ref.scores)
    assert torch.equal(labels[0, :count], ref.labels)
    assert torch.equal(masks[0, :count].bool(), ref.masks)
    assert not boxes[0, count:].any() and not masks[0, count:].any()


def test_contract_of_the_file(mask_fpn):
    """Input and output names, types and dynamic axes, and the metadata, as documented."""
    _model, path = mask_fpn
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert (inp.name, inp.type, inp.shape) == (
        "images",
        "tensor(uint8)",
        ["batch", 3, "height", "width"],
    )
    outputs = {o.name: (o.type, o.shape) for o in session.get_outputs()}
    assert outputs == {
        "boxes": ("tensor(float)", ["batch", 100, 4]),
        "scores": ("tensor(float)", ["batch", 100]),
        "labels": ("tensor(int64)", ["batch", 100]),
        "num_detections": ("tensor(int64)", ["batch"]),
        "masks": ("tensor(uint8)", ["batch", 100, "height", "width"]),
    }
    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    assert json.loads(meta["classes"]) == list(CLASSES)
    assert json.loads(meta["category_ids"]) == [1, 2, 3]
    assert meta["preset"] == "tiny_fpn" and meta["format"] == "rcnn-onnx/1"
    out = session.run(None, {"images": np.zeros((1, 3, 64, 96), np.uint8)})
    assert out[4].shape == (1, 100, 64, 96) and out[4].dtype == np.uint8


class _Resized(torch.nn.Module):
    def __init__(self, cfg) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, images):
        shape = shape_of(images)
        return torch.stack(resized_size(shape[2], shape[3], self.cfg))


def test_resized_size_in_onnx_is_test_resizes(tmp_path):
    """The graph's resize target equals ``test_resize``'s for 300 sizes (float64 arithmetic:
    float32 gives 119 for 600 x 0.2)."""
    cfg = tiny_model().cfg.input
    path = tmp_path / "size.onnx"
    torch.onnx.export(
        _Resized(cfg),
        (torch.zeros((1, 3, 100, 120), dtype=torch.uint8),),
        str(path),
        dynamo=False,
        input_names=["images"],
        dynamic_axes={"images": {2: "h", 3: "w"}},
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    sizes = [
        (600, 800),
        (300, 400),
        *torch.randint(20, 1500, (298, 2), generator=generator).tolist(),
    ]
    for height, width in sizes:
        image = np.zeros((1, 3, height, width), np.uint8)
        resized = eager.test_resize(torch.zeros(3, height, width), cfg.test_short, cfg.max_size)
        assert tuple(session.run(None, {"images": image})[0]) == tuple(resized.shape[-2:])
