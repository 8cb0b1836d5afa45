"""Multithreaded RoIAlign vs torchvision's single call: bit-identical output and gradient."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import roi_align as tv_roi_align

from rcnn.ops.roi_align import roi_align


def random_rois(num: int, batch: int, size: int, generator: torch.Generator) -> torch.Tensor:
    xy = torch.rand(num, 2, generator=generator) * size * 0.8
    wh = torch.rand(num, 2, generator=generator) * size * 0.5 + 1
    index = torch.randint(batch, (num, 1), generator=generator).float()
    return torch.cat([index, xy, xy + wh], 1)


@pytest.mark.parametrize("batch", [1, 2, 3])
@pytest.mark.parametrize("aligned", [False, True])
def test_bit_identical_forward_and_backward(batch, aligned):
    gen = torch.Generator().manual_seed(batch)
    feature = torch.randn(batch, 8, 20, 24, generator=gen)
    rois = random_rois(200, batch, 80, gen)  # boxes cross the border, too
    grad = torch.randn(200, 8, 7, 7, generator=gen)
    outs, grads = [], []
    for fn in (roi_align, tv_roi_align):
        x = feature.clone().requires_grad_(True)
        out = fn(x, rois, (7, 7), 0.25, 2, aligned)
        out.backward(grad)
        outs.append(out.detach())
        grads.append(x.grad)
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(grads[0], grads[1])
    assert grads[0].abs().sum() > 0


def test_inference_mode_and_few_rois():
    gen = torch.Generator().manual_seed(0)
    feature = torch.randn(1, 4, 16, 16, generator=gen).to(memory_format=torch.channels_last)
    for num in (0, 5, 100):
        rois = random_rois(num, 1, 64, gen)
        with torch.inference_mode():
            ours = roi_align(feature, rois, 7, 0.25, 2, False)
        assert torch.equal(ours, tv_roi_align(feature, rois, (7, 7), 0.25, 2, False))


def test_bf16_features_pool_in_float32_and_come_back_in_bf16(torch_threads):
    """Under CPU autocast the features may be bf16: pooled in float32 (the kernel's dtype)."""
    torch_threads(2)
    features = torch.randn(2, 8, 32, 32).bfloat16()
    rois = torch.tensor([[0, 1, 1, 20, 20.0]] * 40 + [[1, 3, 2, 30, 25.0]] * 40)
    pooled = roi_align(features, rois, 7, 1.0, 2, True)
    expected = tv_roi_align(features.float(), rois, (7, 7), 1.0, 2, True).bfloat16()
    assert pooled.dtype == torch.bfloat16 and torch.equal(pooled, expected)


@pytest.mark.parametrize("ratio", [1, 2, 4, 0])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("batch,num", [(1, 10), (1, 300), (3, 300)])
def test_backward_bit_for_bit_on_every_path(ratio, aligned, batch, num):
    """The sparse backward (ratios 1, 2), torchvision's kernel split over threads (4 and the
    adaptive 0) and one RoI chunk: every bit of torchvision's gradient, with RoIs far outside the
    map, tiny ones, and several per pixel."""
    gen = torch.Generator().manual_seed(100 * ratio + num + batch)
    feature = torch.randn(batch, 16, 13, 19, generator=gen)
    rois = random_rois(num, batch, 90, gen)
    rois[::7, 1:] -= 30  # partly or wholly outside the map
    rois[::11, 3:] = rois[::11, 1:3] + 0.2  # smaller than a feature pixel
    grad = torch.randn(num, 16, 5, 6, generator=gen)
    grads = []
    for fn in (roi_align, tv_roi_align):
        x = feature.clone().requires_grad_(True)
        fn(x, rois, (5, 6), 0.2, ratio, aligned).backward(grad)
        grads.append(x.grad.contiguous())
    assert grads[0].abs().sum() > 0
    assert torch.equal(grads[0].view(torch.int32), grads[1].view(torch.int32))


def test_sparse_backward_is_the_one_used_here(monkeypatch):
    """On this build the sparse product passes its self-check, and training uses it: torchvision's
    backward kernel is not called for ratio 2 (it is for the adaptive ratio 0)."""
    import rcnn.ops.roi_align as module

    assert module.sparse_backward_is_exact()
    calls = []
    original = module._backward
    monkeypatch.setattr(module, "_backward", lambda *a: calls.append(a) or original(*a))
    gen = torch.Generator().manual_seed(0)
    for ratio in (2, 0):
        x = torch.randn(2, 8, 20, 24, generator=gen).requires_grad_(True)
        module.roi_align(x, random_rois(100, 2, 80, gen), 7, 0.25, ratio, False).sum().backward()
        assert (len(calls) > 0) == (ratio == 0)
