"""Multithreaded RoIAlign vs torchvision's single call.

The forward is torchvision's kernel on chunks of RoIs: the same bits on every processor. The
gradient is within float rounding everywhere and the same bits where the backward is
torchvision's kernel (threaded) or the sparse product whose self-check passed on this processor
(``rcnn.ops.roi_align.backward_path``); the self-check's outcome depends on the processor (it
passes on AMD Zen 3 / AVX2, fails on Intel Sapphire Rapids), so both outcomes are tested.
"""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import roi_align as tv_roi_align

import rcnn.ops.roi_align as module
from rcnn.ops.roi_align import roi_align


def random_rois(num: int, batch: int, size: int, generator: torch.Generator) -> torch.Tensor:
    xy = torch.rand(num, 2, generator=generator) * size * 0.8
    wh = torch.rand(num, 2, generator=generator) * size * 0.5 + 1
    index = torch.randint(batch, (num, 1), generator=generator).float()
    return torch.cat([index, xy, xy + wh], 1)


def assert_same_gradient(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """Within float rounding, and the same bits: the library uses the sparse product only where
    its self-check showed it exact on this processor, torchvision's kernel elsewhere."""
    ours, theirs = ours.contiguous(), theirs.contiguous()
    scale = float(theirs.abs().max())
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6 * scale)
    assert torch.equal(ours.view(torch.int32), theirs.view(torch.int32))


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
    assert grads[0].abs().sum() > 0
    assert_same_gradient(grads[0], grads[1])


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
    for count in (80, 3):  # threaded, and one chunk (without autocast)
        pooled = roi_align(features, rois[:count], 7, 1.0, 2, True)
        expected = tv_roi_align(features.float(), rois[:count], (7, 7), 1.0, 2, True).bfloat16()
        assert pooled.dtype == torch.bfloat16 and torch.equal(pooled, expected)


@pytest.mark.parametrize("ratio", [1, 2, 4, 0])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("batch,num", [(1, 10), (1, 300), (3, 300)])
def test_backward_bit_for_bit_on_every_path(ratio, aligned, batch, num):
    """The sparse backward (ratios 1, 2, where its self-check passed), torchvision's kernel split
    over threads (4, the adaptive 0, and 1, 2 elsewhere) and one RoI chunk: torchvision's
    gradient, with RoIs far outside the map, tiny ones, and several per pixel."""
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
        grads.append(x.grad)
    assert grads[0].abs().sum() > 0
    assert_same_gradient(grads[0], grads[1])


def backward_calls(monkeypatch) -> list:
    """Records every call of torchvision's backward kernel (``module._backward``)."""
    calls: list = []
    original = module._backward
    monkeypatch.setattr(module, "_backward", lambda *a: calls.append(a) or original(*a))
    return calls


def gradients(ratio: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of the feature map [2, 8, 20, 24] by ours and by torchvision's kernel."""
    feature = torch.randn(2, 8, 20, 24, generator=generator)
    rois = random_rois(100, 2, 80, generator)
    grads = []
    for fn in (module.roi_align, tv_roi_align):
        x = feature.clone().requires_grad_(True)
        fn(x, rois, (7, 7), 0.25, ratio, False).square().sum().backward()
        grads.append(x.grad)
    return grads[0], grads[1]


def test_sparse_backward_is_the_one_used_here(monkeypatch, torch_threads):
    """Whichever path the self-check picks on this processor is the one taken, and its gradient
    is torchvision's: the sparse product for ratio 2 where the check passed, torchvision's kernel
    (threaded) where it failed; torchvision's kernel always for the adaptive ratio 0."""
    torch_threads(2)
    exact = module.sparse_backward_is_exact()
    assert module.backward_path(2, 2) == ("sparse" if exact else "threaded")
    assert module.backward_path(0, 2) == "threaded"
    calls = backward_calls(monkeypatch)
    gen = torch.Generator().manual_seed(0)
    for ratio in (2, 0):
        calls.clear()
        ours, theirs = gradients(ratio, gen)
        assert (len(calls) > 0) == (ratio == 0 or not exact)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6 * float(theirs.abs().max()))


@pytest.mark.parametrize("outcome", [False, True])
def test_either_self_check_outcome_gives_torchvisions_gradient(monkeypatch, outcome, torch_threads):
    """Forced to either outcome (as on a processor where it fails): the path follows it and the
    gradient is torchvision's, bit for bit on its kernel, within float rounding on the sparse
    product (bits only where the real self-check passed). Two threads, so that the failed
    outcome takes the threaded kernel (one thread hands the op to torchvision whole)."""
    torch_threads(2)
    monkeypatch.setattr(module, "sparse_backward_is_exact", lambda: outcome)
    calls = backward_calls(monkeypatch)
    ours, theirs = gradients(2, torch.Generator().manual_seed(1))
    assert (len(calls) == 0) == outcome
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6 * float(theirs.abs().max()))
    if not outcome:
        assert torch.equal(ours, theirs)


def test_sparse_backward_bits_on_this_processor():
    """The claim the docstring makes for processors where the self-check passes (AMD Zen 3)."""
    if not module.sparse_backward_is_exact():
        pytest.skip(
            "the sparse product adds in another order on this processor (e.g. Intel Sapphire "
            "Rapids): not bit-exact, so torchvision's kernel is used (tested above)"
        )
    grad = torch.randn(60, 8, 7, 7, generator=torch.Generator().manual_seed(3))
    rois = random_rois(60, 2, 60, torch.Generator().manual_seed(4))
    ours = module._sparse_backward(grad, rois, (2, 8, 15, 15), (7, 7), 0.25, 2, True)
    theirs = module._backward(grad, rois, (2, 8, 15, 15), (7, 7), 0.25, 2, True)
    assert torch.equal(ours.contiguous().view(torch.int32), theirs.view(torch.int32))


def test_self_check_and_backward_run_under_bf16_autocast(torch_threads):
    """``--amp bf16``: the self-check (first use, inside the caller's autocast) and the sparse
    product have float32 kernels only; they run with autocast off, so nothing crashes."""
    module.sparse_backward_is_exact.cache_clear()
    torch_threads(2)
    x = torch.randn(2, 8, 20, 24, generator=torch.Generator().manual_seed(5)).requires_grad_(True)
    rois = random_rois(80, 2, 80, torch.Generator().manual_seed(6))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pooled = module.roi_align(x.bfloat16(), rois, 7, 0.25, 2, False)
        pooled.float().sum().backward()
    assert pooled.dtype == torch.bfloat16
    expected = tv_roi_align(x.detach().bfloat16().float(), rois, (7, 7), 0.25, 2, False)
    assert torch.equal(pooled, expected.bfloat16())
    assert x.grad.dtype == torch.float32 and float(x.grad.abs().sum()) > 0
