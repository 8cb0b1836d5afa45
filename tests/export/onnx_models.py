"""Small exported models shared by the export, predict --onnx and serve tests (built once)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from tiny_models import tiny_config

from rcnn.models.build import build_model

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


def tiny_model(*, mask: bool = True, arch: str = "fpn", seed: int = 0) -> torch.nn.Module:
    """A ResNet-18 detector at 128 px with 3 classes (FPN or C4), seeded, in eval mode."""
    torch.manual_seed(seed)
    cfg = tiny_config(mask=mask, num_classes=len(CLASSES))
    cfg.classes = CLASSES
    if arch == "c4":
        cfg.arch = "c4"
        cfg.anchors.style, cfg.anchors.scales = "gluoncv", (2, 4, 8, 16, 32)
        cfg.box_head.kind, cfg.box_head.pooler_resolution = "res5", 14
        cfg.mask_head.num_conv, cfg.mask_head.pooler_resolution = 0, 14
        cfg.rpn.post_nms_topk = (300, 50)  # res5 runs once per RoI: fewer, for speed
    # res5's pooled features are ~50x larger than the 2fc head's: smaller predictor weights
    scale = 0.02 if arch == "c4" else 1.0
    return spread_predictions(build_model(cfg), seed, scale).eval()
