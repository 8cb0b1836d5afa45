"""``optimize(model, amp=...)``: bf16 autocast inside eval-mode forwards of every architecture
(FPN and C4, Faster and Mask R-CNN); state dict unchanged; ``off`` and ``auto`` as documented.

bf16 is emulated (slowly) on processors without it, so the models and images are tiny."""

from __future__ import annotations

import copy

import pytest
import torch
from detection_match import Dets, match
from tiny_models import tiny_config

from rcnn.models.build import build_model
from rcnn.models.fast import optimize
from rcnn.ops import precision
from rcnn.zoo import get_preset


def tiny(arch: str, mask: bool) -> torch.nn.Module:
    """ResNet-18 FPN (``tiny_config``) or GluonCV's ResNet-18 C4 preset, at 96-128 px."""
    if arch == "c4":
        cfg = get_preset("mask_rcnn_resnet18_v1b_coco").model
        cfg.backbone.pretrained_base, cfg.mask_on = False, mask
        cfg.input.test_short, cfg.input.max_size = 96, 112
        cfg.rpn.pre_nms_topk, cfg.rpn.post_nms_topk = (200, 200), (32, 16)
        cfg.box_head.detections_per_img = 8
    else:
        cfg = tiny_config(mask=mask)
    torch.manual_seed(0)
    return build_model(cfg).eval()


def image(seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, 96, 112), dtype=torch.uint8, generator=gen)


@pytest.mark.parametrize("arch,mask", [("fpn", True), ("c4", True)])
def test_bf16_forward_of_every_architecture(arch, mask):
    plain = tiny(arch, mask)
    fast = optimize(copy.deepcopy(plain), amp="bf16")
    seen = []
    fast.backbone.register_forward_hook(lambda m, i, out: seen.append(next(iter(out.values()))))
    state = plain.state_dict()
    assert fast.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in fast.state_dict().items())
    with torch.no_grad():
        ref, ours = plain([image(0)])[0], fast([image(0)])[0]
    assert seen[0].dtype == torch.bfloat16  # the convolutions ran in bf16
    assert not torch.is_autocast_enabled("cpu")  # and autocast ended with the forward
    assert ours.boxes.dtype == ours.scores.dtype == torch.float32 and len(ref) > 0
    assert (ours.masks is not None) == mask and (not mask or ours.masks.dtype == torch.bool)
    # random weights: many near-tied scores, so compare the detections that match
    pairs = match(
        Dets(ours.boxes, ours.scores, ours.labels), Dets(ref.boxes, ref.scores, ref.labels), 0.9
    )
    assert len(pairs) >= 0.5 * len(ref), (len(pairs), len(ref))
    i, j = (torch.tensor(index) for index in zip(*pairs, strict=True))
    torch.testing.assert_close(ours.scores[i], ref.scores[j], atol=0.03, rtol=0)


def test_train_mode_is_left_to_the_training_loop():
    model = optimize(tiny("fpn", False), amp="bf16").train()
    batch = torch.rand(1, 3, 64, 64)
    assert model.backbone(batch)["p2"].dtype == torch.float32
    assert model._eval_autocast_handles  # hooks installed, but only eval-mode forwards use them
    with pytest.raises(ValueError, match="expected an image tensor"):
        model.eval()([torch.zeros(2, 5, 5, dtype=torch.uint8)])
    assert not torch.is_autocast_enabled("cpu")  # a failed forward leaves no autocast behind


def test_off_is_todays_model_and_auto_follows_the_processor(monkeypatch):
    plain = tiny("fpn", True)
    off = optimize(copy.deepcopy(plain), amp="off", fold_bn=False, channels_last=False)
    with torch.no_grad():
        a, b = plain([image(1)])[0], off([image(1)])[0]
    assert torch.equal(a.boxes, b.boxes) and torch.equal(a.scores, b.scores)
    assert torch.equal(a.masks, b.masks)
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    assert precision.resolve_amp("auto", torch.device("cpu")) is None  # AVX2: float32
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    assert precision.resolve_amp("auto", torch.device("cpu")) is torch.bfloat16  # AMX
    with pytest.raises(ValueError, match="amp must be one of"):
        optimize(plain, amp="fp8")
