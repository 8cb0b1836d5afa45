"""Pascal VOC mAP: VOC07 11-point and VOC2010+ ("VOC12") all-point AP per class at IoU 0.5.

Matching follows the VOC devkit (``VOCevaldet.m``; GluonCV's ``VOCMApMetric``): per class, all
detections sorted by score; each takes the ground truth of its image with the highest IoU; with
IoU >= ``iou_thresh`` it is a true positive if that ground truth is not yet taken, a false positive
if it is (duplicates), and neither if the ground truth is ``difficult`` (``Record.ignore``);
below the threshold it is a false positive. Recall is over the non-difficult ground truth.

Pixel convention: the devkit and GluonCV add 1 to widths and heights because their boxes are
integer pixel indices with inclusive ends. Our boxes are continuous (``structures``): the VOC
reader turns ``xmin..xmax`` (1-based, inclusive) into ``x1 = xmin - 1, x2 = xmax``, so the width
already includes that pixel and ``box_offset=0`` gives the devkit's IoU exactly. Pass
``box_offset=1`` only for boxes stored as inclusive integer indices.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from rcnn.structures import Detections, Record

logger = logging.getLogger(__name__)

# One image's detections as numpy: boxes float [D, 4] XYXY, scores float [D], labels int [D].
DetArrays = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass
class ClassMatches:
    """The detections of one class after matching, ignored (difficult) ones removed.

    Attributes:
        scores: float ``[D]`` sorted descending.
        tp: bool ``[D]``: true positive (else false positive).
        num_gt: number of non-difficult ground-truth boxes of the class.
    """

    scores: np.ndarray
    tp: np.ndarray
    num_gt: int

    def precision_recall(self) -> tuple[np.ndarray, np.ndarray]:
        """Cumulative precision and recall ``[D]`` down the score-sorted list."""
        tp = np.cumsum(self.tp)
        fp = np.cumsum(~self.tp)
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        recall = tp / self.num_gt if self.num_gt else np.full(len(tp), np.nan)
        return precision, recall


def box_iou(boxes1: np.ndarray, boxes2: np.ndarray, offset: float = 0.0) -> np.ndarray:
    """IoU ``[N, M]`` of XYXY boxes ``[N, 4]`` and ``[M, 4]``; ``offset`` is added to sizes."""
    x1 = np.maximum(boxes1[:, None, 0], boxes2[None, :, 0])
    y1 = np.maximum(boxes1[:, None, 1], boxes2[None, :, 1])
    x2 = np.minimum(boxes1[:, None, 2], boxes2[None, :, 2])
    y2 = np.minimum(boxes1[:, None, 3], boxes2[None, :, 3])
    inter = np.clip(x2 - x1 + offset, 0, None) * np.clip(y2 - y1 + offset, 0, None)
    area1 = (boxes1[:, 2] - boxes1[:, 0] + offset) * (boxes1[:, 3] - boxes1[:, 1] + offset)
    area2 = (boxes2[:, 2] - boxes2[:, 0] + offset) * (boxes2[:, 3] - boxes2[:, 1] + offset)
    union = area1[:, None] + area2[None, :] - inter
    return inter / np.maximum(union, np.finfo(np.float64).eps)


def voc07_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC2007 11-point AP: mean over t in {0, 0.1, ..., 1} of max precision at recall >= t."""
    total = 0.0
    for t in np.linspace(0.0, 1.0, 11):
        above = precision[recall >= t]
        total += float(above.max()) if above.size else 0.0
    return total / 11.0


def voc12_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC2010+ AP: area under the monotone (non-increasing) precision envelope."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def _match_image(
    det_boxes: np.ndarray, gt_boxes: np.ndarray, gt_ignore: np.ndarray, iou_thresh: float, offset
) -> np.ndarray:
    """Outcome per detection of one image and class, in the given (score) order: 1 TP, 0 FP,
    -1 ignored (matched a difficult box)."""
    outcome = np.zeros(len(det_boxes), dtype=np.int8)
    if len(gt_boxes) == 0:
        return outcome
    ious = box_iou(det_boxes, gt_boxes, offset)
    taken = np.zeros(len(gt_boxes), dtype=bool)
    for d in range(len(det_boxes)):
        best = int(np.argmax(ious[d]))
        if ious[d, best] < iou_thresh:
            continue
        if gt_ignore[best]:
            outcome[d] = -1
        elif not taken[best]:
            taken[best] = True
            outcome[d] = 1
    return outcome


def match_class(
    records: list[Record],
    detections: dict[Any, DetArrays],
    label: int,
    *,
    iou_thresh: float = 0.5,
    box_offset: float = 0.0,
) -> ClassMatches:
    """Match the detections of class ``label`` to the ground truth of ``records`` (devkit rules).

    Within one image the detections are matched in score order, which is the devkit's global order
    restricted to that image, so matching image by image gives the devkit's result.
    """
    scores, tps, num_gt = [], [], 0
    for record in records:
        in_class = record.labels == label
        gt_boxes = record.boxes[in_class].astype(np.float64)
        gt_ignore = record.ignore[in_class].astype(bool)
        num_gt += int((~gt_ignore).sum())
        if record.image_id not in detections:
            continue
        boxes, det_scores, labels = detections[record.image_id]
        keep = labels == label
        order = np.argsort(-det_scores[keep], kind="mergesort")
        det_boxes, det_scores = boxes[keep][order].astype(np.float64), det_scores[keep][order]
        outcome = _match_image(det_boxes, gt_boxes, gt_ignore, iou_thresh, box_offset)
        scores.append(det_scores[outcome >= 0])
        tps.append(outcome[outcome >= 0] == 1)
    all_scores = np.concatenate(scores) if scores else np.zeros(0)
    all_tp = np.concatenate(tps) if tps else np.zeros(0, dtype=bool)
    order = np.argsort(-all_scores, kind="mergesort")
    return ClassMatches(all_scores[order].astype(np.float64), all_tp[order], num_gt)


def detections_to_arrays(detections: Detections) -> DetArrays:
    """Detections on the CPU as numpy ``(boxes [D, 4], scores [D], labels [D])``."""
    detections = detections.to("cpu")
    return (
        detections.boxes.detach().double().numpy().reshape(-1, 4),
        detections.scores.detach().double().numpy().reshape(-1),
        detections.labels.detach().numpy().reshape(-1),
    )


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not np.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


class VOCEvaluator:
    """VOC07 and VOC12 mAP at ``iou_thresh`` (module docstring for the rules).

    A class without non-difficult ground truth has AP NaN and is left out of the mean. Only the
    images passed to ``process`` are scored (every record when none was).
    """

    def __init__(
        self,
        records: list[Record],
        class_names: list[str],
        *,
        iou_thresh: float = 0.5,
        box_offset: float = 0.0,
    ) -> None:
        self.records = list(records)
        self.class_names = list(class_names)
        self.iou_thresh = iou_thresh
        self.box_offset = box_offset
        self._known_images = {r.image_id for r in self.records}
        self.reset()

    def reset(self) -> None:
        """Forget every processed detection."""
        self._detections: dict[Any, DetArrays] = {}

    def process(self, image_ids: list[Any], detections: list[Detections]) -> None:
        """Add the detections of some images (a later call for the same image replaces it)."""
        for image_id, dets in zip(image_ids, detections, strict=True):
            if image_id not in self._known_images:
                raise ValueError(f"image id {image_id!r} is not in the evaluator's records")
            self._detections[image_id] = detections_to_arrays(dets)

    def state(self) -> dict[str, Any]:
        """The processed detections (picklable), for gathering from other processes."""
        return {"detections": self._detections}

    def merge_state(self, state: dict[str, Any]) -> None:
        """Add the detections of another evaluator's ``state()``."""
        self._detections.update(state["detections"])

    def add_arrays(self, detections: dict[Any, DetArrays]) -> None:
        """Add detections already as numpy ``{image id: (boxes, scores, labels)}``."""
        unknown = set(detections) - self._known_images
        if unknown:
            raise ValueError(f"image ids not in the evaluator's records: {sorted(unknown)[:10]}")
        self._detections.update(detections)

    def matches(self) -> list[ClassMatches]:
        """The matching of every class over the scored images."""
        records = self.records
        if self._detections:
            records = [r for r in records if r.image_id in self._detections]
        return [
            match_class(
                records,
                self._detections,
                label,
                iou_thresh=self.iou_thresh,
                box_offset=self.box_offset,
            )
            for label in range(len(self.class_names))
        ]

    def evaluate(self) -> dict[str, dict[str, Any]]:
        """``{"voc07": {"mAP", "per_class": {name: AP}}, "voc12": {...}}``."""
        per_class: dict[str, dict[str, float]] = {"voc07": {}, "voc12": {}}
        for name, matches in zip(self.class_names, self.matches(), strict=True):
            precision, recall = matches.precision_recall()
            nan = float("nan")
            per_class["voc07"][name] = voc07_ap(recall, precision) if matches.num_gt else nan
            per_class["voc12"][name] = voc12_ap(recall, precision) if matches.num_gt else nan
        metrics = {
            key: {"mAP": _nanmean(list(values.values())), "per_class": values}
            for key, values in per_class.items()
        }
        logger.info(
            "VOC07 mAP %.4f VOC12 mAP %.4f", metrics["voc07"]["mAP"], metrics["voc12"]["mAP"]
        )
        return metrics
