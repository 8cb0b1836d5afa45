"""``rcnn.export.nms.group_nms`` (one ONNX NonMaxSuppression with a batch entry per group) against
torchvision's ``nms`` run on each group alone, in PyTorch and in onnxruntime."""

from __future__ import annotations

import onnxruntime as ort
import torch
from torchvision.ops import nms

from rcnn.export.nms import group_nms


class _GroupNMS(torch.nn.Module):
    def forward(self, boxes, scores, valid):
        return group_nms(boxes, scores, valid, 0.5)


def _candidates(groups: int, count: int):
    generator = torch.Generator().manual_seed(0)
    corner = torch.rand((groups, count, 2), generator=generator) * 60
    size = torch.rand((groups, count, 2), generator=generator) * 30 + 1
    scores = torch.rand((groups, count), generator=generator)
    valid = torch.rand((groups, count), generator=generator) > 0.2
    return torch.cat([corner, corner + size], -1), scores, valid


def test_group_nms_is_per_group_nms_in_pytorch_and_onnxruntime(tmp_path):
    boxes, scores, valid = _candidates(6, 80)
    expected = torch.zeros_like(valid)
    for g in range(6):
        index = torch.where(valid[g])[0]
        expected[g, index[nms(boxes[g, index], scores[g, index], 0.5)]] = True
    assert 0 < expected.sum() < valid.sum()  # some suppressed, some kept
    assert torch.equal(_GroupNMS()(boxes, scores, valid), expected)
    path = tmp_path / "nms.onnx"
    torch.onnx.export(
        _GroupNMS(),
        _candidates(2, 10),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["boxes", "scores", "valid"],
        dynamic_axes={name: {0: "g", 1: "n"} for name in ("boxes", "scores", "valid")},
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (kept,) = session.run(
        None, {"boxes": boxes.numpy(), "scores": scores.numpy(), "valid": valid.numpy()}
    )
    assert torch.equal(torch.from_numpy(kept), expected)
