"""``build_model(cfg)``: the only place that reads the whole ``ModelConfig``."""

from __future__ import annotations

import logging

from rcnn.models.anchors import AnchorGenerator
from rcnn.models.c4 import C4RoIHeads, build_c4
from rcnn.models.config import ModelConfig
from rcnn.models.fpn import FPN, Backbone
from rcnn.models.pretrained import load_pretrained_base
from rcnn.models.rcnn import RCNN, FasterRCNN, MaskRCNN
from rcnn.models.resnet import ResNetBody
from rcnn.models.roi_heads import RoIHeads
from rcnn.models.rpn import RPN

logger = logging.getLogger(__name__)

ARCHS = ("fpn", "c4")


def build_fpn_backbone(cfg: ModelConfig) -> Backbone:
    """ResNet body + FPN (P2-P6)."""
    body = ResNetBody(cfg.backbone)
    load_pretrained_base(body, cfg)
    fpn = FPN(body.out_channels, cfg.fpn.out_channels, norm=cfg.fpn.norm, p6=cfg.fpn.p6)
    return Backbone(body, fpn)


def build_model(cfg: ModelConfig) -> RCNN:
    """A ``FasterRCNN`` or ``MaskRCNN`` (``cfg.mask_on``) (random / ImageNet init)."""
    if cfg.arch not in ARCHS:
        raise ValueError(f"model.arch {cfg.arch!r} is not available; expected one of {ARCHS}")
    if cfg.num_classes < 1:
        raise ValueError("model.classes is empty: a detector needs at least one class")
    mask_cfg = cfg.mask_head if cfg.mask_on else None
    if cfg.arch == "c4":  # res4 feeds the RPN and RoIAlign; res5 runs per RoI in the heads
        backbone, res5, res5_channels = build_c4(cfg)
        load_pretrained_base(backbone.body, cfg, res5=res5)
    else:
        backbone = build_fpn_backbone(cfg)
    anchors = AnchorGenerator(cfg.anchors, backbone.strides)
    rpn = RPN(cfg.rpn, anchors, backbone.out_channels)
    if cfg.arch == "c4":
        roi_heads = C4RoIHeads(
            cfg.box_head,
            mask_cfg,
            res5=res5,
            res5_channels=res5_channels,
            num_classes=cfg.num_classes,
        )
    else:
        # the RoI heads use every level but the last (P6 serves the RPN only, Lin et al. 2017
        # sec. 4.2)
        roi_heads = RoIHeads(
            cfg.box_head,
            mask_cfg,
            in_channels=backbone.out_channels,
            strides=backbone.strides[:-1],
            num_classes=cfg.num_classes,
        )
    model_class = MaskRCNN if cfg.mask_on else FasterRCNN
    return model_class(cfg, backbone, rpn, roi_heads)
