"""GluonCV's RPN drops small proposals before its pre-NMS top-k; ours after: the measured effect.

Run from the repository root::

    .venv/bin/python -m benchmarks.gluoncv_min_size_order --images 20

GluonCV's ``RPNProposal`` sets the score of every decoded, clipped box narrower or lower than
``rpn_min_size`` (16 px inclusive for VOC; 1 px for COCO, which drops nothing) to -1 before
``box_nms(topk=pre_nms)`` ranks them, so its top-k holds ``pre_nms`` valid boxes; ours
(``rcnn.models.rpn.generate_proposals``) takes the top-k of all anchors and then drops the small
ones, so it may rank fewer. This runs ``faster_rcnn_resnet50_v1b_voc`` (the VOC preset: the only
ones with a minimum size) with the peer fixture's seeded weights on raccoon images resized as
the preset does (600 px short side), once as it is and once with GluonCV's order (small boxes'
logits set to -inf before the top-k), and prints per image how many proposals and final
detections differ. Random weights, not trained ones: a trained RPN scores small boxes lower.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

import rcnn.models.rpn as rpn
from rcnn.convert import gluoncv_model
from rcnn.data import read_image
from rcnn.ops.boxes import BoxCoder, clip_boxes, remove_small

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "weights" / "fixtures"))
from seeded import seeded_weights  # noqa: E402

NETWORK = "faster_rcnn_resnet50_v1b_voc"
IMAGES = ROOT.parent / "shared" / "data" / "raccoon" / "images"
original = rpn.generate_proposals


def small_first(anchors, logits, deltas, image_sizes, *, cfg, training):
    """``generate_proposals`` with GluonCV's order: small boxes' logits -inf before the top-k."""
    coder = BoxCoder(cfg.box_weights, cfg.box_clip)
    flat_anchors, masked = torch.cat(anchors, 0), []
    flat_logits, flat_deltas = torch.cat(logits, 1), torch.cat(deltas, 1)
    for i, size in enumerate(image_sizes):
        boxes = clip_boxes(coder.decode(flat_deltas[i], flat_anchors), size)
        small = torch.ones(len(boxes), dtype=torch.bool)
        small[remove_small(boxes, cfg.min_size)] = False
        masked.append(flat_logits[i].masked_fill(small, float("-inf")))
    split = torch.stack(masked).split([x.shape[1] for x in logits], 1)
    return original(anchors, list(split), deltas, image_sizes, cfg=cfg, training=training)


def run(model, image, proposals_of: list) -> tuple:
    with torch.no_grad():
        (det,) = model([image])
    return det, proposals_of[-1]


def as_set(boxes: torch.Tensor, labels: torch.Tensor | None = None) -> set:
    """Rows (label and box rounded to 0.01 px) as a set."""
    rows = np.round(boxes.numpy(), 2).tolist()
    marks = labels.tolist() if labels is not None else [0] * len(rows)
    return {(mark, *row) for mark, row in zip(marks, rows, strict=True)}


def line(row) -> str:
    return f"proposals {row[0]} ({row[1]} differ), detections {row[2]} ({row[3]} differ)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(2)
    meta = json.loads((ROOT / f"tests/weights/fixtures/gluoncv/{NETWORK}.json").read_text())
    weights = seeded_weights(meta["params"], meta["seed"], meta["scales"])
    model = gluoncv_model(NETWORK, weights)
    captured = []
    model.rpn.register_forward_hook(lambda _m, _i, out: captured.append(out[0][0].boxes))
    totals = np.zeros(4, dtype=np.int64)
    for path in sorted(IMAGES.glob("*.jpg"))[: args.images]:
        image = read_image(str(path))
        rpn.generate_proposals = original
        ours, ours_props = run(model, image, captured)
        rpn.generate_proposals = small_first
        theirs, their_props = run(model, image, captured)
        rpn.generate_proposals = original
        props = as_set(their_props)
        dets = as_set(theirs.boxes, theirs.labels)
        row = (
            len(props),
            len(props - as_set(ours_props)),
            len(dets),
            len(dets - as_set(ours.boxes, ours.labels)),
        )
        totals += row
        print(path.name, line(row))
    print("all images:", line(totals))


if __name__ == "__main__":
    main()
