"""Mask Scoring R-CNN: MaskIoU targets by hand, mask score = class score x predicted IoU on FPN
and C4 models, and a MaskIoU loss that falls when trained."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rcnn.models.build import build_model
from rcnn.models.config import ModelConfig
from rcnn.models.maskiou import maskiou_targets
from rcnn.structures import Targets


def test_maskiou_targets_by_hand():
    logits = torch.full((2, 2, 4, 4), -5.0)
    logits[0, 1, :2, :] = 5.0  # class 1 predicts the top half (8 pixels)
    logits[1, 0, :, :1] = 5.0  # class 0 predicts the first column (4 pixels)
    targets = torch.zeros(2, 4, 4)
    targets[0, :1, :] = 1.0  # 4 pixels, all inside the prediction: IoU 4 / 8
    targets[1, :, 1:2] = 1.0  # disjoint from the prediction: IoU 0
    iou = maskiou_targets(logits, torch.tensor([1, 0]), targets)
    assert iou.tolist() == [0.5, 0.0]
    empty = maskiou_targets(torch.full((1, 1, 4, 4), -5.0), torch.tensor([0]), torch.zeros(1, 4, 4))
    assert empty.tolist() == [0.0]


def _config(arch: str) -> ModelConfig:
    cfg = ModelConfig(arch=arch, classes=("a", "b"), mask_on=True)
    cfg.backbone.name, cfg.backbone.pretrained_base = "resnet18", False
    cfg.fpn.out_channels, cfg.box_head.fc_dim, cfg.box_head.batch_size_per_image = 16, 32, 32
    cfg.mask_head.conv_dim, cfg.mask_head.num_conv = 16, 1
    cfg.mask_head.maskiou, cfg.mask_head.maskiou_fc_dim = True, 32
    cfg.input.train_short, cfg.input.test_short, cfg.input.max_size = (64,), 64, 64
    cfg.box_head.score_thresh = 0.0
    if arch == "c4":
        cfg.anchors.style, cfg.box_head.kind, cfg.rpn.channels = "gluoncv", "res5", 32
    return cfg


def _sample():
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8, generator=generator)
    square = [np.array([8, 8, 40, 8, 40, 40, 8, 40], dtype=np.float64)]
    target = Targets(
        boxes=torch.tensor([[8.0, 8.0, 40.0, 40.0]]), labels=torch.tensor([1]),
        ignore=torch.tensor([False]), image_id=1, image_size=(64, 64), orig_size=(64, 64),
        masks=[square],
    )  # fmt: skip
    return image, target


@pytest.mark.parametrize("arch", ["fpn", "c4"])
def test_mask_score_is_class_score_times_predicted_iou(arch):
    torch.manual_seed(0)
    model = build_model(_config(arch))
    image, target = _sample()
    losses = model.train()([image], [target])
    value = float(losses["loss_maskiou"].detach())
    assert math.isfinite(value) and value > 0
    losses["loss_maskiou"].backward()
    head = model.roi_heads.maskiou_head
    assert head.predictor.weight.grad.abs().sum() > 0
    assert model.roi_heads.mask_head.predictor.weight.grad is None  # no gradient into masks
    model.eval()
    predictor = head.predictor
    with torch.no_grad():
        predictor.weight.zero_()
        predictor.bias.fill_(1.0)  # predicted IoU 1: the class scores themselves
        plain = model([image])[0]
        predictor.bias.fill_(0.25)
        scored = model([image])[0]
    assert len(plain) > 0
    assert torch.allclose(scored.scores, plain.scores * 0.25)
    assert (scored.scores[:-1] >= scored.scores[1:]).all()
    assert torch.equal(scored.boxes, plain.boxes) and torch.equal(scored.masks, plain.masks)
    model.roi_heads.maskiou_head = None  # the same weights without the head: same class scores
    with torch.no_grad():
        assert torch.allclose(model([image])[0].scores, plain.scores)


def test_maskiou_loss_falls_when_trained():
    torch.manual_seed(0)
    model = build_model(_config("fpn")).train()
    image, target = _sample()
    optimizer = torch.optim.SGD(model.roi_heads.maskiou_head.parameters(), lr=0.05)
    values = []
    for _ in range(12):
        loss = model([image], [target])["loss_maskiou"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        values.append(float(loss.detach()))
    assert values[-1] < 0.5 * values[0]


def test_maskiou_loss_trains_only_its_head():
    # its gradient into the shared features made training from scratch diverge (shapes demo and
    # balloon: loss_maskiou inf at iteration 8); only the MaskIoU head learns from it
    torch.manual_seed(0)
    model = build_model(_config("fpn")).train()
    image, target = _sample()
    model([image], [target])["loss_maskiou"].backward()
    head = model.roi_heads.maskiou_head
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.predictor.parameters())
    others = [p for n, p in model.named_parameters() if not n.startswith("roi_heads.maskiou_head")]
    assert all(p.grad is None or not p.grad.any() for p in others)


def test_reset_class_resizes_the_maskiou_predictor():
    model = build_model(_config("fpn"))
    old = model.roi_heads.maskiou_head.predictor
    model.reset_class(["b", "new"], reuse_weights=["b"])
    new = model.roi_heads.maskiou_head.predictor
    assert new.out_features == 2
    assert torch.equal(new.weight[0], old.weight[1]) and torch.equal(new.bias[0], old.bias[1])
