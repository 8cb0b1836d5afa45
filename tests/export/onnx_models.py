"""Small exported models shared by the export, predict --onnx and serve tests (built once)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from tiny_models import tiny_config

from rcnn.export.compare import mask_iou
from rcnn.models.build import build_model
from rcnn.ops.masks import paste_masks, paste_windows
from rcnn.structures import Detections

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
FRUITS = DATA / "fruits_nuts" / "images" / "0.jpg"
BALLOON = DATA / "balloon" / "val2017" / "14898532020_ba6199dd22_k.jpg"
RACCOON = DATA / "raccoon" / "images" / "raccoon-1.jpg"
CLASSES = ("date", "fig", "hazelnut")


def photo(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """uint8 [3, H, W] RGB of the photo at ``path`` resized to ``size`` = (H, W)."""
    image = Image.open(path).convert("RGB").resize((size[1], size[0]), Image.BILINEAR)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).contiguous()


def spread_predictions(model: torch.nn.Module, seed: int = 0, scale: float = 1.0):
    """Seeded weights of the RPN and box predictors with a wide spread, so that an untrained
    model gives detections of varied scores, classes and boxes (not ~1/(C+1) everywhere)."""
    generator = torch.Generator().manual_seed(seed)
    layers = [model.rpn.head.objectness, model.rpn.head.deltas]
    layers += [model.roi_heads.box_predictor.cls_score, model.roi_heads.box_predictor.bbox_pred]
    with torch.no_grad():
        for layer, std in zip(layers, (0.3, 0.05, 0.5 * scale, 0.1 * scale), strict=True):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * std)
    return model


def spread_maskiou(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Seeded MaskIoU predictor weights giving predicted IoUs spread around 0.5 (its init gives
    ~0 everywhere, clamped to 0: all scores 0, tied), inside (0, 1) so that no two scores tie
    (0.3 clamps some to 0), and rescoring reorders the detections."""
    generator = torch.Generator().manual_seed(seed)
    predictor = model.roi_heads.maskiou_head.predictor
    with torch.no_grad():
        predictor.weight.copy_(torch.randn(predictor.weight.shape, generator=generator) * 0.03)
        predictor.bias.fill_(0.5)
    return model


def tiny_model(
    *, mask: bool = True, arch: str = "fpn", seed: int = 0, maskiou: bool = False
) -> torch.nn.Module:
    """A ResNet-18 detector at 128 px with 3 classes (FPN or C4), seeded, in eval mode; with
    ``maskiou``, Mask Scoring R-CNN (its MaskIoU head rescoring the detections)."""
    torch.manual_seed(seed)
    cfg = tiny_config(mask=mask, num_classes=len(CLASSES))
    cfg.classes = CLASSES
    cfg.mask_head.maskiou, cfg.mask_head.maskiou_fc_dim = maskiou, 32
    if arch == "c4":
        cfg.arch = "c4"
        cfg.anchors.style, cfg.anchors.scales = "gluoncv", (2, 4, 8, 16, 32)
        cfg.box_head.kind, cfg.box_head.pooler_resolution = "res5", 14
        cfg.mask_head.num_conv, cfg.mask_head.pooler_resolution = 0, 14
        cfg.rpn.post_nms_topk = (300, 50)  # res5 runs once per RoI: fewer, for speed
    # res5's pooled features are ~50x larger than the 2fc head's: smaller predictor weights
    scale = 0.02 if arch == "c4" else 1.0
    model = spread_predictions(build_model(cfg), seed, scale)
    return (spread_maskiou(model, seed) if maskiou else model).eval()


def assert_same(ours: Detections, ref: Detections, probs: torch.Tensor | None = None) -> None:
    """onnxruntime's detections ``ours`` match PyTorch's ``ref`` within the contract's bounds.

    A mask under IoU 0.95 passes only where its paste window moved (a box coordinate within the
    1 px tolerance crossed an integer of ``paste_windows``) and PyTorch's own mask probabilities
    ``probs`` [N, M, M] (``torch_mask_probs``) pasted into onnxruntime's box give its mask.
    """
    assert len(ours.scores) == len(ref.scores) > 0
    assert torch.equal(ours.labels, ref.labels)
    assert (ours.boxes - ref.boxes).abs().max() <= 1.0
    assert (ours.scores - ref.scores).abs().max() <= 1e-3
    if ref.masks is None:
        assert ours.masks is None
        return
    assert ours.masks.shape == ref.masks.shape
    union = (ours.masks | ref.masks).flatten(1).sum(1)
    assert (union > 0).sum() >= len(union) // 2  # most masks have pixels: the check means something
    low = torch.where(mask_iou(ours.masks, ref.masks) < 0.95)[0]
    if len(low) == 0:
        return
    assert probs is not None, f"masks {low.tolist()} under IoU 0.95"
    side = probs.shape[-1]
    moved = paste_windows(ours.boxes[low], side) != paste_windows(ref.boxes[low], side)
    assert moved.any(1).all(), f"masks {low.tolist()} under IoU 0.95 in unmoved windows"
    pasted = paste_masks(probs[low], ours.boxes[low], tuple(ours.masks.shape[-2:]))
    assert mask_iou(pasted, ours.masks[low]).min() >= 0.95
