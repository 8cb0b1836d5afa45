"""The exportable forward (``ExportableRCNN``) in PyTorch equals ``model(images)`` exactly, for the
presets' variants: GluonCV-style anchors and joint proposal ranking, ``nms_topk``, 14x14 RoIs
average-pooled to 7x7, 4conv1fc + BN heads (torchvision v2) with RoIPool, C4 with masks, Mask
Scoring R-CNN (MaskIoU rescoring), Detectron2's aligned mask paste."""

from __future__ import annotations

import pytest
import torch
from onnx_models import BALLOON, FRUITS, photo, spread_maskiou, spread_predictions
from tiny_models import tiny_config

from rcnn.export.graph import ExportableRCNN
from rcnn.models.build import build_model


def gluoncv_fpn(cfg):
    cfg.anchors.style, cfg.rpn.per_level, cfg.rpn.min_size = "gluoncv", False, 1.0
    cfg.box_head.nms_topk, cfg.box_head.score_thresh = 50, 0.01
    cfg.box_head.pooler_resolution, cfg.box_head.pool_downsample = 14, 2


def v2_heads(cfg):
    cfg.backbone.norm = cfg.fpn.norm = "bn"
    cfg.rpn.conv_depth = 2
    cfg.box_head.kind, cfg.box_head.norm, cfg.box_head.conv_dim = "4conv1fc", "bn", 16
    cfg.mask_head.norm = "bn"
    cfg.box_head.pool_mode = "pool"  # RoIPool (no preset uses it; the option exists)


def c4_mask(cfg):
    cfg.arch, cfg.anchors.style = "c4", "gluoncv"
    cfg.box_head.kind, cfg.box_head.pooler_resolution = "res5", 14
    cfg.mask_head.num_conv, cfg.mask_head.pooler_resolution = 0, 14
    cfg.rpn.post_nms_topk = (300, 40)


def mask_scoring(cfg):
    cfg.mask_head.maskiou, cfg.mask_head.maskiou_fc_dim = True, 32


def aligned_paste(cfg):
    cfg.mask_head.paste = "aligned"  # Detectron2's paste geometry (set by its config conversion)


@pytest.mark.parametrize("variant", [gluoncv_fpn, v2_heads, c4_mask, mask_scoring, aligned_paste])
def test_exportable_forward_is_the_model(variant):
    torch.manual_seed(0)
    cfg = tiny_config(mask=True, num_classes=3)
    variant(cfg)
    model = build_model(cfg)
    for module in model.modules():  # BN statistics away from (0, 1), so that BN matters
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 2.0)
    model = spread_predictions(model, scale=0.02 if cfg.arch == "c4" else 1.0)
    if cfg.mask_head.maskiou:
        model = spread_maskiou(model)
    model.eval()
    images = [photo(FRUITS, (180, 240)), photo(BALLOON, (180, 240))]
    with torch.no_grad():
        refs = model(images)
        boxes, scores, labels, counts, masks = ExportableRCNN(model)(torch.stack(images))
    for i, ref in enumerate(refs):
        count = int(counts[i])
        assert count == len(ref.scores) > 0
        assert torch.allclose(boxes[i, :count], ref.boxes, atol=1e-4)
        assert torch.allclose(scores[i, :count], ref.scores, atol=1e-6)
        assert torch.equal(labels[i, :count], ref.labels)
        assert (masks[i, :count].bool() != ref.masks).sum() <= ref.masks.numel() * 1e-5
