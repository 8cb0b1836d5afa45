"""Mixed precision choices and a bf16 CPU run; gradient clipping; GPU ids."""

from __future__ import annotations

import pytest
import torch
from engine_tiny import TinyDetector, TinySet, tiny_config

from rcnn.engine.distributed import parse_gpus
from rcnn.engine.train import train
from rcnn.errors import UserError
from rcnn.ops import precision

CPU = torch.device("cpu")


def test_amp_choices_on_the_cpu(monkeypatch):
    assert precision.resolve_amp("off", CPU) is None
    with pytest.raises(UserError, match="--amp fp16 needs a GPU; on the CPU use --amp bf16"):
        precision.resolve_amp("fp16", CPU)
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    assert precision.resolve_amp("auto", CPU) is torch.bfloat16
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    assert precision.resolve_amp("auto", CPU) is None  # float32 (with a warning)
    assert precision.resolve_amp("bf16", CPU) is torch.bfloat16  # asked for: emulated


def test_bf16_autocast_runs_the_forward_in_bf16(tmp_path):
    seen = []

    class Spy(TinyDetector):
        def features(self, images):
            feats = super().features(images)
            seen.append(feats.dtype)
            return feats

    torch.manual_seed(0)
    model = Spy()
    result = train(tiny_config(max_iters=2, amp="bf16"), model, TinySet(8), run_dir=tmp_path)
    assert result.iterations == 2
    assert seen == [torch.bfloat16, torch.bfloat16]
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32


def test_gradient_clipping_bounds_the_update(tmp_path):
    # one SGD step without momentum history: |delta w| = lr * |g|, and |g| <= clip after clipping
    torch.manual_seed(0)
    model = TinyDetector(noisy=False)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    cfg = tiny_config(max_iters=1, lr=1.0, lr_warmup=0, wd=0.0, clip_grad=0.01)
    train(cfg, model, TinySet(8), run_dir=tmp_path)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert float((after - before).norm()) == pytest.approx(0.01, rel=1e-4)


def test_gpu_ids_are_checked_before_any_work():
    assert parse_gpus("") == [] and parse_gpus("cpu") == []
    with pytest.raises(UserError, match="GPU 99 does not exist"):
        parse_gpus("99")
    with pytest.raises(UserError, match="expected comma-separated GPU ids"):
        parse_gpus("zero")
    with pytest.raises(UserError, match="must be distinct"):
        parse_gpus("0,0")


def test_cpu_autocast_runs_roi_align_and_nms_in_float32():
    from torchvision.ops import nms, roi_align

    precision.register_cpu_autocast_ops()
    precision.register_cpu_autocast_ops()  # idempotent
    torch.manual_seed(0)
    feature = torch.randn(1, 2, 8, 8)
    rois = torch.tensor([[0.0, 1.0, 1.0, 6.0, 5.0], [0.0, 0.0, 2.0, 7.0, 7.0]])
    expected = roi_align(feature, rois, (3, 3), 1.0, 2, True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = roi_align(feature.bfloat16(), rois, (3, 3), 1.0, 2, True)
        keep = nms(rois[:, 1:].bfloat16(), torch.tensor([0.9, 0.8]).bfloat16(), 0.5)
    assert out.dtype == torch.bfloat16
    # the kernel ran in float32 on the bf16-rounded input: equal up to bf16 rounding
    torch.testing.assert_close(out.float(), expected, atol=0.05, rtol=0.02)
    assert keep.tolist() == nms(rois[:, 1:], torch.tensor([0.9, 0.8]), 0.5).tolist()
