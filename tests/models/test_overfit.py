"""A tiny Mask R-CNN overfits two synthetic images: its losses fall."""

from __future__ import annotations

import numpy as np
import torch
from tiny_models import tiny_config

from rcnn.models.build import build_model
from rcnn.structures import Targets


def draw_scene(seed: int) -> tuple[torch.Tensor, Targets]:
    """A 128 x 128 image with a bright rectangle (class 0) and a dark disc (class 1)."""
    rng = np.random.default_rng(seed)
    img = np.full((128, 128, 3), 120, dtype=np.uint8) + rng.integers(
        0, 20, (128, 128, 3), dtype=np.uint8
    )
    x0, y0 = rng.integers(5, 40, 2)
    img[y0 : y0 + 50, x0 : x0 + 40] = (230, 60, 60)
    cx, cy, r = rng.integers(80, 100), rng.integers(70, 100), 20
    yy, xx = np.mgrid[:128, :128]
    img[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = (30, 30, 160)
    angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    disc = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], 1).reshape(-1)
    rect = np.array([x0, y0, x0 + 40, y0, x0 + 40, y0 + 50, x0, y0 + 50], dtype=np.float64)
    boxes = torch.tensor(
        [[x0, y0, x0 + 40, y0 + 50], [cx - r, cy - r, cx + r, cy + r]], dtype=torch.float32
    )
    targets = Targets(
        boxes,
        torch.tensor([0, 1]),
        torch.zeros(2, dtype=torch.bool),
        seed,
        (128, 128),
        (128, 128),
        masks=[[rect], [disc.astype(np.float64)]],
    )
    return torch.from_numpy(img).permute(2, 0, 1).contiguous(), targets


def test_tiny_model_overfits_two_images():
    torch.manual_seed(0)
    cfg = tiny_config(mask=True)
    cfg.backbone.norm, cfg.backbone.freeze_at = "bn", 0
    model = build_model(cfg).train()
    scenes = [draw_scene(1), draw_scene(2)]
    images, targets = [s[0] for s in scenes], [s[1] for s in scenes]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.02, momentum=0.9, weight_decay=1e-4)
    history: dict[str, list[float]] = {"total": [], "loss_rpn_cls": [], "loss_mask": []}
    for _ in range(40):
        out = model(images, targets)
        loss = sum(v for k, v in out.items() if k.startswith("loss_"))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history["total"].append(float(loss))
        for key in ("loss_rpn_cls", "loss_mask"):
            history[key].append(float(out[key]))
    first = {k: np.mean(v[:3]) for k, v in history.items()}
    last = {k: np.mean(v[-3:]) for k, v in history.items()}
    assert np.isfinite(history["total"]).all()
    # The RPN separates two objects from a flat background quickly; the mask head and the
    # RoI heads (whose box loss grows while proposals improve and positives multiply) more slowly.
    assert last["loss_rpn_cls"] < 0.25 * first["loss_rpn_cls"], (first, last)
    assert last["loss_mask"] < 0.6 * first["loss_mask"], (first, last)
    assert last["total"] < 0.8 * first["total"], (first, last)
