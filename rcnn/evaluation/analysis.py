"""Error analysis at IoU 0.5: precision / recall / F1 at a score threshold, PR curves, confusion.

Everything here starts from the VOC-style matching of ``voc.match_class`` (one ground truth per
detection, greedy in score order, crowd / difficult regions ignored). Because matching is greedy by
score, the detections above a threshold are matched exactly as if the lower ones did not exist, so
the counts at any threshold are read off the full matching.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from rcnn.evaluation.voc import ClassMatches, DetArrays, box_iou, voc12_ap
from rcnn.structures import Record

BACKGROUND = "background"


def threshold_metrics(
    matches: list[ClassMatches], class_names: list[str], score_thresh: float
) -> list[dict[str, Any]]:
    """Per class: ground truths, TP, FP, FN, precision, recall and F1 of detections >= threshold.

    Precision is NaN without detections, recall NaN without ground truth, F1 NaN when either is.
    """
    rows = []
    for name, match in zip(class_names, matches, strict=True):
        kept = match.scores >= score_thresh
        tp = int(match.tp[kept].sum())
        fp = int(kept.sum()) - tp
        precision = tp / (tp + fp) if tp + fp else math.nan
        recall = tp / match.num_gt if match.num_gt else math.nan
        f1 = math.nan
        if not (math.isnan(precision) or math.isnan(recall)):
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append(
            {
                "class": name,
                "gt": match.num_gt,
                "tp": tp,
                "fp": fp,
                "fn": match.num_gt - tp,
                "precision": precision,
                "recall": recall,
                "f1": f1,
            }
        )
    return rows


def _pick_gt(ious: np.ndarray, gt_labels: np.ndarray, taken: np.ndarray, label: int, thresh):
    """Index of the ground truth a detection takes: the best free one of its own class at IoU >=
    ``thresh``, else the best free one of any class; -1 when none."""
    free = (~taken) & (ious >= thresh)
    for candidates in (free & (gt_labels == label), free):
        if candidates.any():
            return int(np.argmax(np.where(candidates, ious, -1.0)))
    return -1


def _confuse_image(matrix: np.ndarray, record: Record, dets: DetArrays, score_thresh, iou_thresh):
    boxes, scores, labels = dets
    order = np.argsort(-scores, kind="mergesort")
    order = order[scores[order] >= score_thresh]
    gt_boxes = record.boxes.astype(np.float64).reshape(-1, 4)
    background = matrix.shape[0] - 1
    taken = np.zeros(len(gt_boxes), dtype=bool)
    ious = box_iou(boxes[order].reshape(-1, 4), gt_boxes) if len(gt_boxes) else None
    for row, d in enumerate(order):
        label = int(labels[d])
        best = -1 if ious is None else _pick_gt(ious[row], record.labels, taken, label, iou_thresh)
        if best < 0:
            matrix[background, label] += 1
        elif not record.ignore[best]:
            taken[best] = True
            matrix[int(record.labels[best]), label] += 1
    for g in np.flatnonzero(~taken & ~record.ignore.astype(bool)):
        matrix[int(record.labels[g]), background] += 1


def confusion_matrix(
    records: list[Record],
    detections: dict[Any, DetArrays],
    num_classes: int,
    *,
    score_thresh: float = 0.5,
    iou_thresh: float = 0.5,
) -> np.ndarray:
    """Counts ``[C+1, C+1]``: rows ground-truth class, columns predicted class, index C background.

    Detections >= ``score_thresh`` are matched in score order, class-agnostically (a detection
    prefers a ground truth of its own class). ``[g, p]``: ground truth g detected as p;
    ``[C, p]``: a detection on background (or a duplicate); ``[g, C]``: a missed ground truth.
    Detections on crowd / difficult regions are not counted. Only images in ``detections`` count.
    """
    matrix = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    for record in records:
        if record.image_id in detections:
            _confuse_image(matrix, record, detections[record.image_id], score_thresh, iou_thresh)
    return matrix


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_pr_curves(matches: list[ClassMatches], class_names: list[str], path: str | Path) -> None:
    """Precision-recall curve per class (legend: VOC12 AP) as a PNG."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 6))
    for name, match in zip(class_names, matches, strict=True):
        if not match.num_gt:
            continue
        precision, recall = match.precision_recall()
        ap = voc12_ap(recall, precision)
        ax.plot(np.r_[0.0, recall], np.r_[1.0, precision], label=f"{name} (AP50 {ap:.3f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    ax.set_title("Precision-recall at IoU 0.5")
    ax.grid(alpha=0.3)
    if len(class_names) <= 20:
        ax.legend(loc="lower left", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_confusion_matrix(matrix: np.ndarray, class_names: list[str], path: str | Path) -> None:
    """The confusion matrix (rows ground truth, columns prediction, last = background) as a PNG."""
    plt = _pyplot()
    names = [*class_names, BACKGROUND]
    size = max(5.0, 0.45 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ticks = np.arange(len(names))
    ax.set_xticks(ticks, names, rotation=90)
    ax.set_yticks(ticks, names)
    ax.set(xlabel="predicted", ylabel="ground truth", title="Confusion matrix (IoU 0.5)")
    if len(names) <= 30:
        top = matrix.max() if matrix.size else 0
        for (row, col), count in np.ndenumerate(matrix):
            color = "white" if top and count > top / 2 else "black"
            ax.text(col, row, str(count), ha="center", va="center", color=color, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def format_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """Rows of dicts as an aligned text table (floats with 4 decimals, NaN as ``nan``)."""
    if not rows:
        return ""
    columns = columns or list(rows[0])
    cells = [columns] + [[_cell(row[c]) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
