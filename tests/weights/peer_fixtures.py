"""Shared by the peer-parity tests: fixture loading, our detections, and the comparison.

Shape shorthand: N detections, M mask side.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

FIXTURES = Path(__file__).resolve().parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
from seeded import seeded_weights  # noqa: E402

BOX_TOL, SCORE_TOL, MASK_BAND = 0.5, 1e-3, 0.02


def load_fixture(peer: str, name: str) -> tuple[dict, dict[str, np.ndarray], dict]:
    """(meta, expected arrays, regenerated peer weights) of fixture ``peer/name``."""
    meta = json.loads((FIXTURES / peer / f"{name}.json").read_text())
    expected = dict(np.load(FIXTURES / peer / f"{name}.npz"))
    weights = seeded_weights(meta["params"], meta["seed"], meta["scales"])
    return meta, expected, weights


def read_input(name: str) -> torch.Tensor:
    """uint8 [3, H, W] fixture input image."""
    from rcnn.data import read_image

    return read_image(str(FIXTURES / name))


def our_outputs(model, image: torch.Tensor) -> dict[str, np.ndarray]:
    """Our detections (and M x M mask probabilities) of one image, as numpy arrays."""
    height, width = image.shape[-2:]
    model.cfg.input.test_short, model.cfg.input.max_size = min(height, width), max(height, width)
    captured = {}
    if model.has_mask:

        def keep(_module, _inputs, output):
            captured["logits"] = output

        handle = model.roi_heads.mask_head.register_forward_hook(keep)
    with torch.no_grad():
        (det,) = model([image])
    out = {"boxes": det.boxes.numpy(), "scores": det.scores.numpy(), "labels": det.labels.numpy()}
    if model.has_mask:
        handle.remove()
        logits = captured["logits"]
        out["mask_probs"] = logits[torch.arange(len(det.labels)), det.labels].sigmoid().numpy()
    return out


def compare(ours: dict, theirs: dict, *, clip_to: tuple[int, int] | None = None) -> list[str]:
    """Differences beyond the tolerances (empty: equal within float rounding).

    Labels equal, boxes within 0.5 px (theirs clipped to ``clip_to`` = (H, W) first: GluonCV
    returns them unclipped), scores within 1e-3, M x M mask probabilities equal in their
    thresholded value where theirs is not within 0.02 of 0.5.
    """
    problems = []
    if clip_to is not None:
        boxes = theirs["boxes"].copy()
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, clip_to[1])
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, clip_to[0])
        theirs = {**theirs, "boxes": boxes}
    count = len(theirs["scores"])
    if len(ours["scores"]) != count:
        problems.append(f"{len(ours['scores'])} detections vs {count}")
        count = min(count, len(ours["scores"]))
    labels = theirs["labels"][:count]
    if not np.array_equal(ours["labels"][:count], labels):
        bad = np.where(ours["labels"][:count] != labels)[0]
        problems.append(f"labels differ at {bad[:10].tolist()}")
    box_err = np.abs(ours["boxes"][:count] - theirs["boxes"][:count]).max(initial=0)
    score_err = np.abs(ours["scores"][:count] - theirs["scores"][:count]).max(initial=0)
    if box_err > BOX_TOL:
        problems.append(f"boxes differ by {box_err:.3f} px")
    if score_err > SCORE_TOL:
        problems.append(f"scores differ by {score_err:.2e}")
    if "mask_probs" in theirs:
        num = len(theirs["mask_probs"])
        mine, ref = ours["mask_probs"][:num], theirs["mask_probs"]
        sure = np.abs(ref - 0.5) > MASK_BAND
        wrong = int(((mine > 0.5) != (ref > 0.5))[sure].sum())
        if wrong:
            problems.append(f"{wrong} mask pixels differ")
    return problems
