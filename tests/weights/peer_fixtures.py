"""Shared by the peer-parity tests: fixture loading, our detections, and the comparison.

The 101-layer networks' parity runs by hand (``RCNN_PEER_FULL=1 pytest tests/weights``; figures
in the README's peers section); CI runs it for the others (one ResNet-101-v1d included) and checks
every network's key map and shapes on a weightless (meta-device) model.

Shape shorthand: N detections, M mask side.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

FIXTURES = Path(__file__).resolve().parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
from seeded import seeded_weights  # noqa: E402

BOX_TOL, SCORE_TOL, MASK_BAND = 0.5, 1e-3, 0.02
# detections whose scores are this close are tied: their order is float rounding's choice
TIE = 1e-5


FULL = os.environ.get("RCNN_PEER_FULL") == "1"


def fixture_names(peer: str) -> list[str]:
    return sorted(p.stem for p in (FIXTURES / peer).glob("*.json"))


def parity_cases(peer: str, in_ci=lambda name: "101" not in name) -> list:
    """pytest params of ``peer``'s fixtures; those ``in_ci`` rejects run with RCNN_PEER_FULL=1."""
    reason = "101-layer parity runs by hand: RCNN_PEER_FULL=1 (README, peers section)"
    return [
        pytest.param(name, marks=pytest.mark.skipif(not (FULL or in_ci(name)), reason=reason))
        for name in fixture_names(peer)
    ]


def read_meta(peer: str, name: str) -> dict:
    return json.loads((FIXTURES / peer / f"{name}.json").read_text())


@functools.lru_cache(maxsize=3)
def load_fixture(peer: str, name: str) -> tuple[dict, dict[str, np.ndarray], dict]:
    """(meta, expected arrays, regenerated peer weights) of fixture ``peer/name`` (cached: do
    not modify them)."""
    meta = read_meta(peer, name)
    expected = dict(np.load(FIXTURES / peer / f"{name}.npz"))
    weights = seeded_weights(meta["params"], meta["seed"], meta["scales"])
    return meta, expected, weights


def zero_weights(meta: dict) -> dict[str, np.ndarray]:
    """The fixture's peer keys with zeros of their shapes (key-map checks need no values)."""
    return {key: np.zeros(shape, np.float32) for key, shape in meta["params"]}


def check_fits(cfg, weights) -> None:
    """``load_state_dict_checked`` of ``weights`` (``PeerWeights``) into our model of ``cfg``
    built on the meta device (shapes only: a fraction of the build time; the copy is a no-op)."""
    from rcnn.models.build import build_model
    from rcnn.weights import load_state_dict_checked

    cfg.backbone.pretrained_base = False
    cfg.classes = weights.classes
    with torch.device("meta"):
        model = build_model(cfg)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*to a meta parameter.*is a no-op")
        load_state_dict_checked(model, weights.state_dict, source=weights.source)


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
        out["masks"] = det.masks.numpy()  # bool [N, H, W]: pasted at the image's resolution
    return out


def tie_runs(scores: np.ndarray) -> list[np.ndarray]:
    """Runs of consecutive positions of (descending) ``scores`` whose neighbours differ < TIE."""
    breaks = np.where(np.abs(np.diff(scores)) >= TIE)[0] + 1
    return np.split(np.arange(len(scores)), breaks)


def align_ties(ours: dict, theirs: dict, count: int) -> dict:
    """``ours`` reordered inside each tie run of ``theirs`` (first ``count`` detections) so that
    each of theirs faces our detection of the same label with the nearest box (greedy)."""
    order = np.arange(len(ours["scores"]))
    for run in tie_runs(theirs["scores"][:count]):
        free = list(run)
        for j in run:
            cost = [
                np.abs(ours["boxes"][i] - theirs["boxes"][j]).max()
                + 1e6 * (ours["labels"][i] != theirs["labels"][j])
                for i in free
            ]
            order[j] = free.pop(int(np.argmin(cost)))
    return {key: value[order] for key, value in ours.items()}


def pasted_differences(masks: np.ndarray, theirs: dict, *, min_side: float = 0.0) -> int:
    """Pixels where pasted ``masks`` (bool [N, H, W], in the peer's detection order) differ from
    the peer's pasted probabilities (uint8, x 255) on pixels not within MASK_BAND of 0.5, over
    the masks whose box sides are >= ``min_side`` px."""
    ref = theirs["pasted_probs"].astype(np.float32) / 255
    boxes = theirs["boxes"][: len(ref)]
    keep = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) >= min_side
    sure = (np.abs(ref - 0.5) > MASK_BAND) & keep[:, None, None]
    return int((masks[: len(ref)] != (ref >= 0.5))[sure].sum())


def compare(ours: dict, theirs: dict, *, clip_to: tuple[int, int] | None = None) -> list[str]:
    """Differences beyond the tolerances (empty: equal within float rounding).

    Labels equal, boxes within 0.5 px (theirs clipped to ``clip_to`` = (H, W) first: GluonCV
    returns them unclipped), scores within 1e-3 (tied detections matched as a set:
    ``align_ties``), M x M mask probabilities equal in their thresholded value where theirs is
    not within 0.02 of 0.5.
    """
    if clip_to is not None:
        boxes = theirs["boxes"].copy()
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, clip_to[1])
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, clip_to[0])
        theirs = {**theirs, "boxes": boxes}
    count = min(len(ours["scores"]), len(theirs["scores"]))
    return compare_aligned(align_ties(ours, theirs, count), theirs)


def compare_aligned(ours: dict, theirs: dict) -> list[str]:
    """``compare`` of detections already in the same order (ties aligned), boxes comparable."""
    problems = []
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
