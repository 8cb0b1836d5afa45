"""Models and data of the torchvision comparison: same seeded weights, same real images.

Shape shorthand: H/W benchmark image size, N instances of an image.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import torch
from PIL import Image
from torch import nn
from torchvision.models import detection

from rcnn.models.layers import freeze_batchnorm
from rcnn.structures import Targets
from rcnn.zoo import load_torchvision

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "fruits_nuts"
NUM_CLASSES = 91  # torchvision's COCO builders (background included)
ARCHS = {"mask": "maskrcnn_resnet50_fpn", "faster": "fasterrcnn_resnet50_fpn"}


@dataclass
class Sample:
    """One real image resized to the benchmark size, in both libraries' input formats."""

    image: torch.Tensor  # uint8 [3, H, W] (ours)
    image_float: torch.Tensor  # float [3, H, W] in [0, 1] (torchvision)
    ours: Targets
    theirs: dict


def load_samples(size: tuple[int, int], count: int = 2) -> list[Sample]:
    """The first ``count`` fruits_nuts photos (800x600) stretched to ``size`` = (H, W), with
    their polygons scaled alike (ours) and rasterised to full-size bitmaps (torchvision)."""
    meta = json.loads((DATA / "trainval.json").read_text())
    height, width = size
    out = []
    for info in meta["images"][:count]:
        raw = Image.open(DATA / "images" / info["file_name"]).convert("RGB")
        sx, sy = width / raw.width, height / raw.height
        image = np.asarray(raw.resize((width, height), Image.BILINEAR)).copy()
        image = torch.from_numpy(image).permute(2, 0, 1).contiguous()
        anns = [a for a in meta["annotations"] if a["image_id"] == info["id"]]
        polygons = [
            [np.asarray(p, dtype=np.float64) * np.tile([sx, sy], len(p) // 2)]
            for a in anns
            for p in a["segmentation"][:1]
        ]
        boxes = torch.tensor(
            [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
             for a in anns],
            dtype=torch.float32,
        ) * torch.tensor([sx, sy, sx, sy])  # fmt: skip
        labels = torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)
        bitmaps = np.stack(
            [mask_util.decode(mask_util.merge(mask_util.frPyObjects(p, height, width)))
             for p in polygons]
        )  # fmt: skip
        ours = Targets(
            boxes=boxes,
            labels=labels - 1,
            ignore=torch.zeros(len(anns), dtype=torch.bool),
            image_id=int(info["id"]),
            image_size=size,
            orig_size=size,
            masks=polygons,
        )
        theirs = {"boxes": boxes, "labels": labels, "masks": torch.from_numpy(bitmaps)}
        out.append(Sample(image, image.float() / 255, ours, theirs))
    return out


def torchvision_skeleton(arch: str, size: tuple[int, int]) -> nn.Module:
    """torchvision's builder with seeded random weights (trainable BN) at benchmark ``size``."""
    torch.manual_seed(0)
    return getattr(detection, ARCHS[arch])(
        weights=None,
        weights_backbone=None,
        num_classes=NUM_CLASSES,
        min_size=min(size),
        max_size=max(size),
    )


def fine_tune_setup(model: nn.Module) -> nn.Module:
    """FrozenBN body, stem and layer1 frozen (``trainable_backbone_layers=3``), score threshold 0
    so that every image yields ``detections_per_img`` detections."""
    freeze_batchnorm(model.backbone.body)
    body = model.backbone.body
    for module in (body.conv1, body.bn1, body.layer1):
        module.requires_grad_(False)
    model.roi_heads.score_thresh = 0.0
    return model


def build_torchvision(arch: str, samples: list[Sample], size: tuple[int, int]) -> nn.Module:
    """torchvision's model, seeded random weights, fine-tune setup (``fine_tune_setup``).

    BN statistics come from one training forward on ``samples`` (momentum 1), as a pretrained
    backbone's would: with random statistics activations explode and scores turn NaN. The
    classifier and box regressor are scaled up so that scores spread out (x4: distinct scores
    from about 0.3 to 0.9, not saturated at 1.0 where ties make the order arbitrary) and boxes
    move off the proposals.
    """
    model = torchvision_skeleton(arch, size)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 1.0
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight.mul_(4)
        model.roi_heads.box_predictor.bbox_pred.weight.mul_(50)
        model.rpn.head.cls_logits.weight.mul_(5)
    model.train()
    with torch.no_grad():
        model([s.image_float for s in samples], [target_for(s, arch) for s in samples])
    return fine_tune_setup(model)


def load_torchvision_model(arch: str, state_dict: dict, size: tuple[int, int]) -> nn.Module:
    """``build_torchvision``'s model again from its saved state dict (no calibration pass)."""
    model = fine_tune_setup(torchvision_skeleton(arch, size))
    model.load_state_dict(state_dict)
    return model


def build_ours(arch: str, theirs: nn.Module, size: tuple[int, int]) -> nn.Module:
    """Our model carrying torchvision's (calibrated) weights via ``load_torchvision``."""
    return build_ours_from_state(arch, theirs.state_dict(), size)


def target_for(sample: Sample, arch: str) -> dict:
    """torchvision's target dict (no masks for Faster R-CNN)."""
    if arch == "mask":
        return sample.theirs
    return {k: v for k, v in sample.theirs.items() if k != "masks"}


def same_detections(theirs: dict, ours, image_size: tuple[int, int]) -> str:
    """How closely our detections equal torchvision's, order-insensitive.

    Each of ours is paired with torchvision's detection of the same label and nearest box (float
    rounding may swap detections whose scores differ by less than it). "yes" when every pair is
    within the parity test's tolerances (box 1e-3 px, score 1e-4, mask IoU >= 0.99); either way
    the largest differences follow.
    """
    if len(ours) != len(theirs["boxes"]):
        return f"no ({len(ours)} vs {len(theirs['boxes'])} detections)"
    if len(ours) == 0:
        return "no detections"
    box_diff = (ours.boxes[:, None] - theirs["boxes"][None]).abs().amax(-1)
    box_diff[ours.labels[:, None] != theirs["labels"][None] - 1] = float("inf")
    box_diff, twin = box_diff.min(1)
    score_diff = (ours.scores - theirs["scores"][twin]).abs()
    ok = (box_diff <= 1e-3) & (score_diff <= 1e-4)
    text = f"max |d box| {float(box_diff.max()):.1e} px, |d score| {float(score_diff.max()):.0e}"
    if ours.masks is not None:
        if tuple(ours.masks.shape[-2:]) != tuple(image_size):
            return f"no (masks of size {tuple(ours.masks.shape[-2:])})"
        a, b = ours.masks, theirs["masks"][twin, 0] > 0.5
        inter = (a & b).flatten(1).sum(1).float()
        union = (a | b).flatten(1).sum(1).float()
        iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))
        ok &= iou >= 0.99
        text += f", mask IoU >= {float(iou.min()):.3f}"
    count = int(ok.sum())
    return ("yes" if count == len(ours) else f"no ({count}/{len(ours)})") + f"; {text}"


def build_ours_from_state(arch: str, state_dict: dict, size: tuple[int, int]) -> nn.Module:
    """``build_ours`` from a saved torchvision state dict (no torchvision model needed)."""
    model = load_torchvision(ARCHS[arch], state_dict)
    model.cfg.input.test_short, model.cfg.input.max_size = min(size), max(size)
    model.cfg.box_head.score_thresh = 0.0
    return model
