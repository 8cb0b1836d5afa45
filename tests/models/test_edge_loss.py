"""Sobel edge loss on masks (seed 003) against a value computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rcnn.models.build import build_model
from rcnn.models.config import ModelConfig
from rcnn.models.edge_loss import mask_edge_loss, mask_losses, sobel_edges
from rcnn.structures import Targets

# target: a single pixel in the middle of a 3x3 mask. Zero-padded Sobel responses are the kernels
# rotated by 180 degrees; |.| clipped to 1 gives columns 0/2 (d/dx) and rows 0/2 (d/dy) of ones.
TARGET = torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
EDGES_X = torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 1.0], [1.0, 0.0, 1.0]])
# prediction: probability 0.1 everywhere. The kernels are separable, a = (1, 2, 1),
# b = (1, 0, -1); over the valid 3x3 window sum(a) is 3, 4, 3 at rows 0, 1, 2 and sum(b) is
# -1, 0, 1 at columns 0, 1, 2, so |d/dx| = 0.1 * (3, 4, 3) on columns 0 and 2, 0 on column 1.
# Squared differences: 2 * ((1 - .3)^2 + (1 - .4)^2 + (1 - .3)^2) = 2.68 per direction;
# mean over 2 directions x 9 pixels = 5.36 / 18.
EXPECTED = 5.36 / 18


def test_sobel_edges_of_a_single_pixel():
    edges = sobel_edges(TARGET[None])
    assert torch.equal(edges[0, 0], EDGES_X)
    assert torch.equal(edges[0, 1], EDGES_X.T)


def test_edge_loss_by_hand():
    logit = math.log(0.1 / 0.9)
    logits = torch.stack([torch.full((3, 3), 20.0), torch.full((3, 3), logit)])[
        None
    ]  # [1, 2, 3, 3]
    loss = mask_edge_loss(logits, torch.tensor([1]), TARGET[None])
    assert float(loss) == pytest.approx(EXPECTED, rel=1e-5)
    # the other class's channel (probability ~1 everywhere) gives another value
    other = mask_edge_loss(logits, torch.tensor([0]), TARGET[None])
    assert float(other) != pytest.approx(EXPECTED, rel=1e-3)


def test_mask_losses_weight_and_off():
    logits = torch.full((1, 1, 3, 3), math.log(0.1 / 0.9), requires_grad=True)
    classes, targets = torch.tensor([0]), TARGET[None]
    assert set(mask_losses(logits, classes, targets)) == {"loss_mask"}
    losses = mask_losses(logits, classes, targets, edge_weight=2.0)
    assert float(losses["loss_mask_edge"]) == pytest.approx(2 * EXPECTED, rel=1e-5)
    losses["loss_mask_edge"].backward()
    assert logits.grad.abs().sum() > 0
    empty = mask_edge_loss(
        torch.zeros((0, 2, 3, 3)), torch.zeros(0, dtype=torch.int64), torch.zeros((0, 3, 3))
    )
    assert float(empty) == 0.0


def test_model_reports_loss_mask_edge():
    cfg = ModelConfig(classes=("a",), mask_on=True)
    cfg.backbone.name, cfg.backbone.pretrained_base = "resnet18", False
    cfg.fpn.out_channels, cfg.box_head.fc_dim, cfg.box_head.batch_size_per_image = 16, 32, 16
    cfg.mask_head.conv_dim, cfg.mask_head.num_conv = 16, 1
    cfg.mask_head.edge_loss_weight = 0.5
    torch.manual_seed(0)
    model = build_model(cfg).train()
    square = [np.array([8, 8, 40, 8, 40, 40, 8, 40], dtype=np.float64)]
    target = Targets(
        boxes=torch.tensor([[8.0, 8.0, 40.0, 40.0]]),
        labels=torch.tensor([0]),
        ignore=torch.tensor([False]),
        image_id=0,
        image_size=(64, 64),
        orig_size=(64, 64),
        masks=[square],
    )
    losses = model([torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)], [target])
    assert math.isfinite(float(losses["loss_mask_edge"])) and float(losses["loss_mask_edge"]) > 0
    losses["loss_mask_edge"].backward()
    assert model.roi_heads.mask_head.predictor.weight.grad.abs().sum() > 0
