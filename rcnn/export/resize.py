"""The test resize in the exported graph: PyTorch's bilinear kernel written out, rounding included.

Shape shorthand: B images, C channels, H/W input size, h/w output size.

``F.interpolate(mode="bilinear", align_corners=False)`` exports as an ONNX ``Resize``, and
onnxruntime's Resize computes its sample positions as ``(x + 0.5) / (w / W) - 0.5``, where
PyTorch's CPU kernel (``aten/src/ATen/native/UpSample.h``, ``compute_source_index_and_lambda``)
computes ``(W / w) * (x + 0.5) - 0.5`` with a fused multiply-add. The positions differ by one
float rounding: a weight error of up to 1.5e-5 at x ~ 300, so 58% of the pixels of a 384x512
image enlarged to 480x640 differ, by up to 7e-5 after normalisation. That is harmless for a
trained model, but the detections of a deep network with wide-spread weights move by far more
than the contract allows (R50-FPN: 20 px, 0.1 in score, benchmarks/README.md). When the input
has the test size already, both compute the identity, which is why only resized inputs differed.

Here the positions and weights are PyTorch's: ``scale = float32(W) / float32(w)``, the source
index rounded once from float64 (exactly what a fused multiply-add gives), ``floor`` and the
clamps of ``guard_index_and_lambda``; the two taps of each axis are combined as the kernel's
compiled loop does, ``fma(x0, w0, x1 * w1)`` (float64 then one rounding), width first. Measured
bit-identical to ``F.interpolate`` on AMD Zen 3 (AVX2 kernel), enlarging and shrinking
(tests/export/test_resize.py); on a kernel compiled without FMA it would differ by 1 ulp.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _taps(in_size: Tensor, out_size: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Source taps of each output position on one axis, as PyTorch's upsampling kernel.

    Args:
        in_size, out_size: int64 0-d tensors (the axis's input and output lengths).

    Returns:
        low, high int64 [out] (the two source indices) and their float32 weights [out].
    """
    scale = (in_size.to(torch.float32) / out_size.to(torch.float32)).to(torch.float64)
    position = torch.arange(0, out_size, dtype=torch.float64)
    # one rounding of the exact scale * (x + 0.5) - 0.5: the kernel's fused multiply-add
    source = (scale * (position + 0.5) - 0.5).to(torch.float32).clamp(min=0)
    low = torch.minimum(source.floor().to(torch.int64), in_size - 1)
    high_weight = (source - low.to(torch.float32)).clamp(0, 1)
    high = torch.minimum(low + 1, in_size - 1)
    return low, high, 1 - high_weight, high_weight


def _interpolate_axis(x: Tensor, dim: int, size: Tensor, in_size: Tensor) -> Tensor:
    """Linear interpolation of float32 ``x`` along ``dim`` (2 or 3) to ``size`` samples."""
    low, high, low_weight, high_weight = _taps(in_size, size)
    if dim == 2:
        low_weight, high_weight = low_weight[:, None], high_weight[:, None]
    high_term = x.index_select(dim, high) * high_weight  # float32, rounded as the kernel
    fused = x.index_select(dim, low).double() * low_weight.double() + high_term.double()
    return fused.to(torch.float32)


def bilinear_resize(x: Tensor, height: Tensor, width: Tensor) -> Tensor:
    """``F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)`` of float
    [B, C, H, W] -> [B, C, h, w], with PyTorch's arithmetic in any ONNX runtime.

    Args:
        height, width: int64 0-d tensors (dynamic when traced).
    """
    shape = torch._shape_as_tensor(x)
    return _interpolate_axis(_interpolate_axis(x, 3, width, shape[3]), 2, height, shape[2])
