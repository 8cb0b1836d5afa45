"""A hand-checked VOC case: three classes, a difficult box, a duplicate, an IoU of exactly 0.5.

Class "a" (3 non-difficult boxes), detections in score order and their outcome:
0.9 TP, 0.8 FP (background), 0.7 TP, 0.6 on the difficult box (ignored), 0.5 FP (duplicate of
the first), 0.4 TP (IoU exactly 0.5). Precision/recall after each counted detection:
(1, 1/3), (1/2, 1/3), (2/3, 2/3), (1/2, 2/3), (3/5, 1).
VOC07: t = 0..0.3 -> 1, t = 0.4..0.6 -> 2/3, t = 0.7..1 -> 0.6: (4 + 2 + 2.4) / 11.
VOC12: envelope 1 on (0, 1/3], 2/3 on (1/3, 2/3], 0.6 on (2/3, 1]: (1 + 2/3 + 0.6) / 3.
Class "b" (1 box): 0.95 FP (on an "a" box), 0.3 TP -> both APs 0.5.
Class "c": no ground truth (AP NaN, left out of the mean); one detection at 0.65.
"""

from __future__ import annotations

import numpy as np
import torch

from rcnn.structures import Detections, Record

CLASSES = ["a", "b", "c"]
AP07_A = (4 + 2 + 2.4) / 11
AP12_A = (1 + 2 / 3 + 0.6) / 3


def _record(image_id, boxes, labels, ignore):
    return Record(
        image_path=f"{image_id}.jpg",
        image_id=image_id,
        height=100,
        width=100,
        boxes=np.array(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.array(labels, dtype=np.int64),
        ignore=np.array(ignore, dtype=bool),
        file_name=f"{image_id:06d}.jpg",
    )


def records() -> list[Record]:
    return [
        _record(1, [[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], [0, 0, 0], [0, 0, 1]),
        _record(2, [[0, 0, 20, 20], [30, 30, 40, 40]], [0, 1], [0, 0]),
    ]


def _dets(rows):
    rows = sorted(rows, key=lambda r: -r[0])
    return Detections(
        boxes=torch.tensor([r[2] for r in rows], dtype=torch.float32).reshape(-1, 4),
        scores=torch.tensor([r[0] for r in rows], dtype=torch.float32),
        labels=torch.tensor([r[1] for r in rows], dtype=torch.int64),
    )


def detections() -> dict[int, Detections]:
    """(score, label, box) per image."""
    return {
        1: _dets(
            [
                (0.9, 0, [0, 0, 10, 10]),
                (0.8, 0, [60, 60, 70, 70]),
                (0.6, 0, [40, 40, 50, 50]),
                (0.5, 0, [0, 0, 10, 10]),
                (0.4, 0, [20, 20, 30, 25]),
            ]
        ),
        2: _dets(
            [
                (0.95, 1, [0, 0, 20, 20]),
                (0.7, 0, [0, 0, 20, 20]),
                (0.65, 2, [50, 50, 60, 60]),
                (0.3, 1, [30, 30, 40, 40]),
            ]
        ),
    }
