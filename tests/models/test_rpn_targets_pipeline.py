"""RPN targets made in the data pipeline equal the ones the model makes for the same image and
boxes (same random stream), and the model uses the attached ones."""

from __future__ import annotations

import pytest
import torch

from rcnn.models.build import build_model
from rcnn.models.config import ModelConfig
from rcnn.structures import Targets


def tiny(arch: str) -> ModelConfig:
    cfg = ModelConfig(arch=arch, classes=("a", "b"))
    cfg.backbone.name, cfg.backbone.pretrained_base = "resnet18", False
    cfg.fpn.out_channels, cfg.box_head.fc_dim, cfg.box_head.batch_size_per_image = 16, 32, 16
    cfg.rpn.batch_size_per_image = 32  # fewer than the negatives: the sample is random
    if arch == "c4":
        cfg.anchors.style, cfg.box_head.kind, cfg.rpn.channels = "gluoncv", "res5", 32
        cfg.rpn.allowed_border = 0.0
    return cfg


def sample(height=150, width=200) -> tuple[torch.Tensor, Targets]:
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8)
    target = Targets(
        boxes=torch.tensor([[20.0, 30.0, 90.0, 120.0], [100.0, 10.0, 190.0, 70.0], [5, 5, 60, 40]]),
        labels=torch.tensor([0, 1, 1]),
        ignore=torch.tensor([False, False, True]),
        image_id=1,
        image_size=(height, width),
        orig_size=(height, width),
    )
    return image, target


def model_targets(model, images, targets, seed: int) -> dict:
    torch.manual_seed(seed)
    _, intermediates = model(images, targets, return_intermediates=True)
    return intermediates


@pytest.mark.parametrize("arch", ["fpn", "c4"])
def test_pipeline_targets_equal_model_targets(arch):
    torch.manual_seed(0)
    cfg = tiny(arch)
    model = build_model(cfg).train()
    image, target = sample()
    inter = model_targets(model, [image], [target], seed=7)
    pipeline = model.rpn_target_transform()
    same_image, attached = pipeline(image, target, generator=torch.Generator().manual_seed(7))
    assert same_image is image
    rpn = attached.rpn_targets
    assert len(rpn.labels) == len(inter["anchors"])
    assert torch.equal(pipeline.anchors(target.image_size), inter["anchors"])
    assert int((rpn.labels == 1).sum()) > 0 and int((rpn.labels == 0).sum()) > 0
    assert torch.equal(rpn.labels, inter["rpn_labels"][0])
    assert torch.equal(rpn.box_targets, inter["rpn_box_targets"][0])
    assert torch.equal(rpn.box_weights, inter["rpn_box_weights"][0])
    # the labels before sampling are the same too, and the sample is drawn from them
    _, before = pipeline.target_generator.label(
        inter["anchors"], target.boxes, target.ignore, target.image_size
    )
    assert torch.all((rpn.labels == -1) | (rpn.labels == before))
    assert int((rpn.labels >= 0).sum()) == cfg.rpn.batch_size_per_image


def test_model_uses_attached_targets_when_anchors_agree():
    torch.manual_seed(0)
    cfg = tiny("fpn")
    model = build_model(cfg).train()
    image, target = sample()
    pipeline = model.rpn_target_transform()
    _, attached = pipeline(image, target, generator=torch.Generator().manual_seed(1))
    inter = model_targets(model, [image], [attached], seed=99)  # another stream: not recomputed
    assert torch.equal(inter["rpn_labels"][0], attached.rpn_targets.labels)
    # a batch padded beyond the small image's own size: the model computes its own targets
    small_image, small = sample(100, 120)
    _, small = pipeline(small_image, small)
    inter = model_targets(model, [image, small_image], [attached, small], seed=3)
    assert len(inter["rpn_labels"][1]) != len(small.rpn_targets.labels)
    assert torch.equal(inter["rpn_labels"][0], attached.rpn_targets.labels)
