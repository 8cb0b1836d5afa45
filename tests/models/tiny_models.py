"""Tiny model configs for fast CPU tests (a module of its own: several test folders have a
``conftest`` and ``from conftest import`` would pick whichever was imported first)."""

from __future__ import annotations

from rcnn.models.config import ModelConfig


def tiny_config(*, mask: bool = True, num_classes: int = 2) -> ModelConfig:
    """ResNet-18 FPN at 128 px with small heads, for fast CPU tests."""
    cfg = ModelConfig(classes=tuple(f"c{i}" for i in range(num_classes)), mask_on=mask)
    cfg.backbone.name = "resnet18"
    cfg.backbone.pretrained_base = False
    cfg.fpn.out_channels = 32
    cfg.input.train_short, cfg.input.test_short, cfg.input.max_size = (128,), 128, 160
    cfg.rpn.pre_nms_topk, cfg.rpn.post_nms_topk = (300, 200), (300, 100)
    cfg.box_head.fc_dim = 64
    cfg.box_head.batch_size_per_image = 64
    cfg.mask_head.conv_dim = 32
    cfg.mask_head.num_conv = 2
    return cfg
