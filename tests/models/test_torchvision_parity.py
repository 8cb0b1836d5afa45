"""Parity with torchvision: its four R50-FPN builders with seeded random weights vs ours loaded
from their state dicts give the same detections on real images, within float rounding.

On AMD Zen 3 (AVX2) the outputs are the same bits (asserted on AVX2 processors); on Intel Sapphire
Rapids (AVX-512, AMX) scores differ by ~2e-5, enough to flip near-tied random-weight detections in
NMS. So everywhere detections are matched one to one, matched ones must agree closely, and an
unmatched one must be a near-tie flip (``detection_match``).
"""

from __future__ import annotations

import pytest
import torch
from detection_match import Decisions, Dets, assert_same_detections
from torch import nn
from torchvision.models import detection

from rcnn.models.layers import freeze_batchnorm
from rcnn.ops.precision import cpu_isa
from rcnn.zoo import load_torchvision

MIN_SIZE, MAX_SIZE, DETECTIONS = 200, 256, 20
PRE_NMS, POST_NMS = 400, 200  # proposals at test time (per level / per image), for speed


def calibrated_torchvision(name: str, images: list[torch.Tensor]) -> nn.Module:
    """torchvision's model with random weights whose BN statistics come from real images.

    One training step's forward (BN momentum 1) sets every BN's running stats to that batch's
    statistics, so activations stay in range; the classifier and box regressor are scaled up so
    that scores spread out and boxes move away from the proposals.
    """
    torch.manual_seed(0)
    model = getattr(detection, name)(
        weights=None,
        weights_backbone=None,
        num_classes=5,
        min_size=MIN_SIZE,
        max_size=MAX_SIZE,
        box_detections_per_img=DETECTIONS,
        rpn_pre_nms_top_n_test=PRE_NMS,
        rpn_post_nms_top_n_test=POST_NMS,
    )
    # a cheap calibration step: few proposals and sampled RoIs
    model.rpn._pre_nms_top_n["training"] = model.rpn._post_nms_top_n["training"] = 200
    model.roi_heads.fg_bg_sampler.batch_size_per_image = 64
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 1.0
    with torch.no_grad():
        predictor = model.roi_heads.box_predictor
        predictor.cls_score.weight.mul_(20)
        predictor.bbox_pred.weight.mul_(10)
        model.rpn.head.cls_logits.weight.mul_(5)
        if hasattr(model.roi_heads, "mask_predictor") and model.roi_heads.mask_predictor:
            # mask logits are exactly 0 where the ReLU features vanish and saturate elsewhere
            # (probability 1.0 next to the zero padding interpolates to exactly 0.5, the
            # threshold): shrink them and move the bias off 0 so no pixel sits on the threshold
            model.roi_heads.mask_predictor.mask_fcn_logits.weight.mul_(0.3)
            model.roi_heads.mask_predictor.mask_fcn_logits.bias.fill_(-0.5)
    h, w = images[0].shape[-2:]
    target = {
        "boxes": torch.tensor([[0.2 * w, 0.2 * h, 0.7 * w, 0.8 * h]]),
        "labels": torch.tensor([1]),
    }
    if "mask" in name:
        target["masks"] = torch.zeros((1, h, w), dtype=torch.uint8)
        target["masks"][0, int(0.3 * h) : int(0.7 * h), int(0.3 * w) : int(0.6 * w)] = 1
    model.train()
    with torch.no_grad():
        model([images[0].float() / 255], [target])
    if not name.endswith("_v2"):  # v1 bodies use FrozenBatchNorm2d whenever weights are loaded
        freeze_batchnorm(model.backbone.body)
    return model.eval()


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))


@pytest.mark.parametrize(
    "name",
    [
        "fasterrcnn_resnet50_fpn",
        "fasterrcnn_resnet50_fpn_v2",
        "maskrcnn_resnet50_fpn",
        "maskrcnn_resnet50_fpn_v2",
    ],
)
def test_same_detections_as_torchvision(name, real_images):
    theirs_model = calibrated_torchvision(name, real_images)
    ours_model = load_torchvision(name, theirs_model.state_dict()).eval()
    ours_model.cfg.input.test_short, ours_model.cfg.input.max_size = MIN_SIZE, MAX_SIZE
    ours_model.cfg.box_head.detections_per_img = DETECTIONS
    ours_model.cfg.rpn.pre_nms_topk = (2000, PRE_NMS)
    ours_model.cfg.rpn.post_nms_topk = (2000, POST_NMS)
    with torch.no_grad():
        theirs = theirs_model([img.float() / 255 for img in real_images])
    ours = ours_model(real_images)
    decisions = Decisions(nms_thresh=0.5, score_thresh=0.05, cap=DETECTIONS)
    for image, t, o in zip(real_images, theirs, ours, strict=True):
        assert len(t["boxes"]) >= 5, f"only {len(t['boxes'])} detections: too few to compare"
        mine, reference = Dets(o.boxes, o.scores, o.labels), Dets(**t_dets(t))
        pairs = assert_same_detections(mine, reference, decisions)
        assert len(pairs) >= len(t["boxes"]) - 2
        if "mask" in name:
            assert o.masks.shape == (len(o), *image.shape[-2:]) and o.masks.dtype == torch.bool
            i, j = (list(index) for index in zip(*pairs, strict=True))
            assert bool((mask_iou(o.masks[i], t["masks"][j, 0] > 0.5) >= 0.99).all())
            assert int(o.masks.sum()) > 0
        else:
            assert o.masks is None
        if cpu_isa() == "AVX2":  # measured bit for bit on AMD Zen 3; not on AVX-512 / AMX
            assert torch.equal(o.boxes, t["boxes"]) and torch.equal(o.scores, t["scores"])


def t_dets(output: dict) -> dict:
    """torchvision's output as ``Dets`` fields (labels without the background column)."""
    return {"boxes": output["boxes"], "scores": output["scores"], "labels": output["labels"] - 1}
