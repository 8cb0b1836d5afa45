"""Every preset of ``rcnn.list_models()`` builds, takes one training step and predicts (tiny input),
and the GluonCV presets carry GluonCV's published defaults (features.md 1.4-1.5)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import rcnn
from rcnn.errors import UserError
from rcnn.models.build import build_model
from rcnn.structures import Targets
from rcnn.zoo import get_preset

HEIGHT, WIDTH = 32, 64


def shrink(cfg):
    """The preset at a tiny input size, with few proposals and sampled RoIs (speed only)."""
    cfg.backbone.pretrained_base = False
    cfg.input.train_short, cfg.input.test_short, cfg.input.max_size = (HEIGHT,), HEIGHT, WIDTH
    cfg.rpn.pre_nms_topk, cfg.rpn.post_nms_topk = (200, 200), (32, 16)
    cfg.box_head.batch_size_per_image = 4
    cfg.box_head.detections_per_img = 8  # random heads score every class alike: cap the masks
    return cfg


def sample(with_masks: bool) -> tuple[torch.Tensor, Targets]:
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, HEIGHT, WIDTH), dtype=torch.uint8, generator=generator)
    square = [np.array([4, 5, 30, 5, 30, 28, 4, 28], dtype=np.float64)]
    target = Targets(
        boxes=torch.tensor([[4.0, 5.0, 30.0, 28.0]]),
        labels=torch.tensor([2]),  # a label every preset has (mask_rcnn_shapes: 3 classes)
        ignore=torch.tensor([False]),
        image_id=0,
        image_size=(HEIGHT, WIDTH),
        orig_size=(HEIGHT, WIDTH),
        masks=[square] if with_masks else None,
    )
    return image, target


@pytest.mark.parametrize("name", rcnn.list_models())
def test_preset_trains_and_predicts(name):
    torch.manual_seed(0)
    cfg = shrink(get_preset(name).model)
    model = build_model(cfg)
    image, target = sample(model.has_mask)
    model.train()
    losses = model([image], [target])
    expected = {"loss_rpn_cls", "loss_rpn_box", "loss_rcnn_cls", "loss_rcnn_box"}
    expected |= {"loss_mask"} if model.has_mask else set()
    assert {k for k in losses if k.startswith("loss_")} == expected
    total = sum(v for k, v in losses.items() if k.startswith("loss_"))
    assert all(math.isfinite(float(v)) for v in losses.values())
    total.backward()
    assert model.roi_heads.box_predictor.cls_score.weight.grad.abs().sum() > 0
    model.eval()
    (det,) = model([image])
    n = len(det.boxes)
    assert det.boxes.shape == (n, 4) and det.scores.shape == (n,) and det.labels.shape == (n,)
    assert det.labels.dtype == torch.int64 and bool((det.labels < model.num_classes).all())
    assert bool((det.scores[:-1] >= det.scores[1:]).all())
    assert bool((det.boxes[:, 0::2] <= WIDTH).all() and (det.boxes[:, 1::2] <= HEIGHT).all())
    if model.has_mask:
        assert det.masks.shape == (n, HEIGHT, WIDTH) and det.masks.dtype == torch.bool
    else:
        assert det.masks is None


def test_gluoncv_c4_voc_defaults():
    preset = get_preset("faster_rcnn_resnet50_v1b_voc")
    cfg = preset.model
    assert (
        cfg.arch == "c4" and cfg.backbone.name == "resnet50" and cfg.backbone.stem == "torchvision"
    )
    assert (cfg.input.test_short, cfg.input.max_size) == (600, 1000)
    assert cfg.rpn.channels == 1024 and cfg.rpn.post_nms_topk == (2000, 300)
    # GluonCV's rpn_min_size 16 on inclusive widths (x2 - x1 + 1)
    assert cfg.rpn.min_size == 15 and cfg.rpn.pre_nms_topk == (12000, 6000)
    box = cfg.box_head
    assert (box.kind, box.pooler_resolution, box.sampling_ratio) == ("res5", 14, 2)
    assert box.batch_size_per_image == 128
    assert (box.nms_thresh, box.nms_topk, box.detections_per_img) == (0.3, 400, 100)
    assert preset.recipe["epochs"] == 20 and preset.recipe["lr"] == 0.001
    assert tuple(preset.recipe["lr_decay_epoch"]) == (14, 20) and preset.recipe["wd"] == 5e-4
    assert preset.recipe["lr_warmup"] == 0


def test_gluoncv_c4_coco_defaults():
    mask = get_preset("mask_rcnn_resnet50_v1b_coco").model
    assert mask.arch == "c4" and mask.mask_on and mask.mask_head.num_conv == 0
    assert (mask.input.test_short, mask.input.max_size) == (800, 1333)
    assert mask.rpn.post_nms_topk == (2000, 1000) and mask.rpn.min_size == 0
    assert mask.box_head.box_clip == 4.42 and mask.box_head.nms_thresh == 0.5
    assert get_preset("mask_rcnn_resnet18_v1b_coco").model.box_head.batch_size_per_image == 256
    v1d = get_preset("faster_rcnn_resnet101_v1d_coco").model
    assert v1d.backbone.name == "resnet101" and v1d.backbone.stem == "v1d"
    assert v1d.box_head.box_clip == 4.14 and v1d.box_head.detections_per_img == 100


def test_c4_model_shapes():
    """15 anchors per stride-16 location, RoIAlign 14 -> res5 7x7 -> 14x14 masks."""
    cfg = shrink(get_preset("mask_rcnn_resnet18_v1b_coco").model)
    model = build_model(cfg)
    assert model.rpn.anchor_generator.num_anchors == 15
    assert model.rpn.head.objectness.out_channels == 15
    assert model.rpn.head.conv[0][0].out_channels == 1024
    image, target = sample(True)
    model.train()
    _, inter = model([image], [target], return_intermediates=True)
    assert inter["anchors"].shape == ((HEIGHT // 16) * (WIDTH // 16) * 15, 4)
    assert inter["mask_targets"].shape[1:] == (14, 14)
    features = model.backbone(torch.zeros(1, 3, HEIGHT, WIDTH))
    assert list(features) == ["c4"] and features["c4"].shape == (1, 256, HEIGHT // 16, WIDTH // 16)
    pooled = model.roi_heads.mask_features(
        list(features.values()), [torch.tensor([[0, 0, 32.0, 32]])]
    )
    assert pooled.shape == (1, 512, 7, 7)
    assert model.roi_heads.mask_head(pooled).shape == (1, 80, 14, 14)


def test_get_model_overrides_by_dotted_key_and_rejects_unknown_keys():
    model = rcnn.get_model(
        "mask_rcnn_fpn_resnet50_v1b_coco",
        pretrained_base=False,
        classes=["a", "b"],
        overrides={"backbone.name": "resnet18", "input": {"test_short": 320}},
    )
    assert model.cfg.backbone.name == "resnet18" and model.cfg.input.test_short == 320
    preset = get_preset("mask_rcnn_fpn_resnet50_v1b_coco").model
    assert model.cfg.input.max_size == preset.input.max_size
    with pytest.raises(UserError, match=r"unknown key 'model\.backbone\.nme'"):
        rcnn.get_model("mask_rcnn_fpn_resnet50_v1b_coco", overrides={"backbone.nme": "x"})
