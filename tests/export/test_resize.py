"""The exported graph's bilinear resize against ``F.interpolate`` (the eager model's test resize),
enlarging and shrinking: onnxruntime's own ``Resize`` computes the sample positions with another
rounding (up to 7e-5 apart on normalised photos), enough to move an R50-FPN's boxes by 20 px."""

from __future__ import annotations

import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx_models import FRUITS, photo

from rcnn.export.proposals import shape_of
from rcnn.export.resize import bilinear_resize


class _Scaled(torch.nn.Module):
    """Resizes [B, C, H, W] to (H * num // den, W * num // den) with ``bilinear_resize``."""

    def __init__(self, num: int, den: int) -> None:
        super().__init__()
        self.num, self.den = num, den

    def forward(self, x):
        shape = shape_of(x)
        return bilinear_resize(x, shape[2] * self.num // self.den, shape[3] * self.num // self.den)


@pytest.mark.parametrize("num, den", [(5, 4), (7, 3), (2, 5), (1, 1)])
def test_onnx_resize_is_pytorchs_bilinear(tmp_path, num, den):
    """Enlarging (x1.25, x2.33), shrinking (x0.4) and the identity: onnxruntime gives
    ``F.interpolate``'s values to float rounding (1 ulp; bit-identical on the AVX2 kernel)."""
    path = tmp_path / "resize.onnx"
    torch.onnx.export(
        _Scaled(num, den),
        (torch.zeros((1, 3, 40, 50)),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["x"],
        dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}},
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = torch.stack([photo(FRUITS, (150, 210)), photo(FRUITS, (150, 210)).flip(-1)])
    x = (images.float() / 255 - 0.45) / 0.225  # normalised, as the graph resizes it
    size = (150 * num // den, 210 * num // den)
    ref = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    out = torch.from_numpy(session.run(None, {"x": x.numpy()})[0])
    assert out.shape == ref.shape
    assert (out - ref).abs().max() <= 1e-6  # onnxruntime's Resize: up to 7e-5
