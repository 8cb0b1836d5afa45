"""Bad and empty inputs give finite losses and a gradient for every trainable parameter; a batch
equals single runs; eval mode takes raw images of any size."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tiny_models import tiny_config

from rcnn.models.build import build_model
from rcnn.structures import Targets


def make_targets(size, boxes, labels, ignore=None) -> Targets:
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    n = len(boxes)
    ignore = torch.zeros(n, dtype=torch.bool) if ignore is None else torch.tensor(ignore)
    masks = [
        [np.array([b[0], b[1], b[2], b[1], b[2], b[3], b[0], b[3]], dtype=np.float64)]
        for b in boxes.tolist()
    ]
    return Targets(
        boxes, torch.tensor(labels, dtype=torch.int64), ignore, 0, size, size, masks=masks
    )


def image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=g)


CASES = {
    "1x1 image, no objects": [(image(1, 1), make_targets((1, 1), [], []))],
    "image smaller than the smallest anchor": [
        (image(20, 24), make_targets((20, 24), [[2, 3, 15, 18]], [1]))
    ],
    "empty targets": [(image(96, 128), make_targets((96, 128), [], []))],
    "crowd-only targets": [
        (image(96, 128), make_targets((96, 128), [[10, 10, 80, 70]], [0], [True]))
    ],
    "zero-size box": [
        (image(96, 128), make_targets((96, 128), [[30, 30, 30, 60], [10, 10, 60, 50]], [0, 1]))
    ],
    "batch mixing sizes": [
        (image(96, 128), make_targets((96, 128), [[10, 10, 60, 50]], [1])),
        (image(130, 70, 1), make_targets((130, 70), [[5, 40, 60, 120]], [0])),
        (image(1, 1, 2), make_targets((1, 1), [], [])),
    ],
}


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    model = build_model(tiny_config(mask=True))
    model.backbone.body.freeze(0)  # every parameter trainable: all must get a gradient
    return model.train()


@pytest.mark.parametrize("case", list(CASES))
def test_finite_losses_and_gradients_everywhere(tiny_model, case):
    images, targets = zip(*CASES[case], strict=True)
    tiny_model.zero_grad(set_to_none=True)
    out = tiny_model(list(images), list(targets))
    losses = {k: v for k, v in out.items() if k.startswith("loss_")}
    assert set(losses) == {
        "loss_rpn_cls",
        "loss_rpn_box",
        "loss_rcnn_cls",
        "loss_rcnn_box",
        "loss_mask",
    }
    assert all(math.isfinite(float(v)) for v in out.values())
    sum(losses.values()).backward()
    params = [(n, p) for n, p in tiny_model.named_parameters() if p.requires_grad]
    no_grad = [n for n, p in params if p.grad is None]
    assert not no_grad, f"{case}: no gradient for {no_grad[:5]}"
    assert all(bool(torch.isfinite(p.grad).all()) for _, p in params)


def test_intermediates_are_returned(tiny_model):
    images, targets = zip(*CASES["batch mixing sizes"], strict=True)
    out, inter = tiny_model(list(images), list(targets), return_intermediates=True)
    assert all(torch.is_tensor(v) for v in out.values())  # the loss dict is flat
    num_anchors = inter["anchors"].shape[0]
    assert inter["rpn_logits"].shape == (3, num_anchors)
    assert inter["rpn_deltas"].shape == (3, num_anchors, 4)
    assert inter["rpn_labels"].shape == (3, num_anchors)
    assert len(inter["proposals"]) == 3 and len(inter["rois"]) == 3
    num_rois = sum(len(r) for r in inter["rois"])
    assert inter["rcnn_cls_targets"].shape == (num_rois,)
    num_pos = int((inter["rcnn_cls_targets"] > 0).sum())
    assert num_pos > 0 and inter["mask_targets"].shape == (num_pos, 28, 28)
    assert inter["mask_logits"].shape == (num_pos, 2, 28, 28)
    # The tutorial's hand-written mask loss: BCE on the GT class channel of each positive RoI.
    pos_classes = inter["rcnn_cls_targets"][inter["rcnn_cls_targets"] > 0] - 1
    logits = inter["mask_logits"][torch.arange(num_pos), pos_classes]
    by_hand = torch.nn.functional.binary_cross_entropy_with_logits(logits, inter["mask_targets"])
    assert torch.allclose(by_hand, out["loss_mask"], atol=1e-6)


def test_eval_raw_images_and_batch_equals_singles():
    torch.manual_seed(0)
    model = build_model(tiny_config(mask=True)).eval()
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight.mul_(50)
    cfg = model.cfg.box_head
    cfg.score_thresh = 0.0
    a, b = image(90, 120, 3), image(90, 120, 4)
    batch = model([a, b])
    singles = [model([a])[0], model([b])[0]]
    for together, alone in zip(batch, singles, strict=True):
        assert len(together) > 5
        torch.testing.assert_close(together.boxes, alone.boxes, atol=1e-3, rtol=0)
        torch.testing.assert_close(together.scores, alone.scores, atol=1e-4, rtol=0)
        assert torch.equal(together.labels, alone.labels)
        assert together.masks.shape == (len(together), 90, 120)
    tiny = model([image(1, 1)])[0]
    assert tiny.masks.shape == (len(tiny), 1, 1) and tiny.masks.dtype == torch.bool
    assert bool((tiny.boxes >= 0).all()) and bool((tiny.boxes <= 1).all())


@pytest.mark.parametrize("norm", ["gn", "bn"])
def test_normalised_heads_train_and_predict(norm):
    torch.manual_seed(0)
    cfg = tiny_config(mask=True)
    cfg.fpn.out_channels = 64  # GroupNorm(32, C) needs C divisible by 32
    cfg.backbone.norm, cfg.fpn.norm, cfg.rpn.conv_depth, cfg.rpn.norm = norm, norm, 2, norm
    cfg.box_head.kind, cfg.box_head.norm, cfg.box_head.num_conv = "4conv1fc", norm, 2
    cfg.box_head.conv_dim = cfg.mask_head.conv_dim = 64
    cfg.mask_head.norm = norm
    model = build_model(cfg).train()
    images, targets = zip(*CASES["batch mixing sizes"][:2], strict=True)
    out = model(list(images), list(targets))
    sum(v for k, v in out.items() if k.startswith("loss_")).backward()
    assert all(math.isfinite(float(v)) for v in out.values())
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    detections = model.eval()([image(50, 70)])
    assert detections[0].boxes.shape[1] == 4
