"""``build_model(cfg)``: the only place that reads the whole ``ModelConfig``."""

from __future__ import annotations

import logging

from torch import nn

from rcnn.models.anchors import AnchorGenerator
from rcnn.models.config import ModelConfig
from rcnn.models.fpn import FPN, Backbone
from rcnn.models.rcnn import RCNN, FasterRCNN, MaskRCNN
from rcnn.models.resnet import ResNetBody
from rcnn.models.roi_heads import RoIHeads
from rcnn.models.rpn import RPN

logger = logging.getLogger(__name__)


def load_pretrained_base(body: nn.Module, cfg: ModelConfig) -> None:
    """ImageNet initialisation of the body: never downloads.

    No local weight cache exists yet, so ``pretrained_base=True`` logs a warning and keeps the
    random initialisation.
    """
    if cfg.backbone.pretrained_base:
        logger.warning(
            "no local ImageNet weights for %s (nothing is downloaded): the body starts from "
            "random initialisation",
            cfg.backbone.name,
        )


def build_fpn_backbone(cfg: ModelConfig) -> Backbone:
    """ResNet body + FPN (P2-P6)."""
    body = ResNetBody(cfg.backbone)
    load_pretrained_base(body, cfg)
    fpn = FPN(body.out_channels, cfg.fpn.out_channels, norm=cfg.fpn.norm)
    return Backbone(body, fpn)


BACKBONES = {"fpn": build_fpn_backbone}


def build_model(cfg: ModelConfig) -> RCNN:
    """A ``FasterRCNN`` or ``MaskRCNN`` (``cfg.mask_on``) (random / ImageNet init)."""
    if cfg.arch not in BACKBONES:
        raise ValueError(
            f"model.arch {cfg.arch!r} is not available; expected one of {sorted(BACKBONES)}"
        )
    if cfg.num_classes < 1:
        raise ValueError("model.classes is empty: a detector needs at least one class")
    backbone = BACKBONES[cfg.arch](cfg)
    anchors = AnchorGenerator(cfg.anchors, backbone.strides)
    rpn = RPN(cfg.rpn, anchors, backbone.out_channels)
    # the RoI heads use every level but the last (P6 serves the RPN only, Lin et al. 2017 sec. 4.2)
    roi_strides = backbone.strides[:-1] if cfg.arch == "fpn" else backbone.strides
    roi_heads = RoIHeads(
        cfg.box_head,
        cfg.mask_head if cfg.mask_on else None,
        in_channels=backbone.out_channels,
        strides=roi_strides,
        num_classes=cfg.num_classes,
    )
    model_class = MaskRCNN if cfg.mask_on else FasterRCNN
    return model_class(cfg, backbone, rpn, roi_heads)
