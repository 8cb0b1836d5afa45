"""What ``rcnn eval`` writes: metrics json, per-class tables, P/R/F1, PR and confusion PNGs."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from rcnn.evaluation.analysis import (
    confusion_matrix,
    format_table,
    save_confusion_matrix,
    save_pr_curves,
    threshold_metrics,
)
from rcnn.evaluation.voc import DetArrays, match_class
from rcnn.fileio import write_text
from rcnn.structures import Record

logger = logging.getLogger(__name__)


def json_safe(value: Any) -> Any:
    """``value`` with NaN / inf as None (strict json has no NaN) and numpy scalars as numbers."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_json(path: str | Path, value: Any) -> None:
    """Write ``json_safe(value)`` with indentation, atomically (``rcnn.fileio``)."""
    write_text(path, json.dumps(json_safe(value), indent=2) + "\n")


def metrics_summary(metrics: dict[str, dict[str, Any]]) -> str:
    """One line per metric family, e.g. ``bbox: AP 0.5012 AP50 0.7810 ...``."""
    lines = []
    for family, values in metrics.items():
        numbers = " ".join(
            f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
            for k, v in values.items()
            if k != "per_class"
        )
        lines.append(f"{family}: {numbers}")
    return "\n".join(lines)


def per_class_table(metrics: dict[str, dict[str, Any]]) -> str:
    """One row per class, one column per metric family's per-class AP."""
    families = [f for f in metrics if "per_class" in metrics[f]]
    if not families:
        return ""
    names = list(metrics[families[0]]["per_class"])
    rows = [
        {
            "class": name,
            **{f"{f} AP": metrics[f]["per_class"].get(name, math.nan) for f in families},
        }
        for name in names
    ]
    return format_table(rows)


def results_to_arrays(
    results: list[dict[str, Any]], category_to_label: dict[Any, int]
) -> dict[Any, DetArrays]:
    """COCO results (XYWH, category ids) as per-image numpy detections (XYXY, labels)."""
    grouped: dict[Any, list[dict[str, Any]]] = {}
    for result in results:
        grouped.setdefault(result["image_id"], []).append(result)
    arrays = {}
    for image_id, entries in grouped.items():
        xywh = np.array([e["bbox"] for e in entries], dtype=np.float64).reshape(-1, 4)
        arrays[image_id] = (
            np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1),
            np.array([e["score"] for e in entries], dtype=np.float64),
            np.array([category_to_label[e["category_id"]] for e in entries], dtype=np.int64),
        )
    return arrays


def write_analysis(
    records: list[Record],
    detections: dict[Any, DetArrays],
    class_names: list[str],
    *,
    score_thresh: float,
    output_dir: str | Path | None,
) -> str:
    """P/R/F1 at ``score_thresh`` (text, returned); PR curves + confusion PNGs in ``output_dir``.

    Images without an entry in ``detections`` get an empty one (they were scored with nothing).
    """
    detections = dict(detections)
    empty = (np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64))
    for record in records:
        detections.setdefault(record.image_id, empty)
    matches = [match_class(records, detections, c) for c in range(len(class_names))]
    rows = threshold_metrics(matches, class_names, score_thresh)
    table = format_table(rows)
    if output_dir is not None:
        output = Path(output_dir)
        output.mkdir(parents=True, exist_ok=True)
        save_pr_curves(matches, class_names, output / "pr_curves.png")
        matrix = confusion_matrix(records, detections, len(class_names), score_thresh=score_thresh)
        save_confusion_matrix(matrix, class_names, output / "confusion_matrix.png")
        write_json(output / f"prf_at_{score_thresh:g}.json", rows)
        write_text(output / f"prf_at_{score_thresh:g}.txt", table + "\n")
    return table


def write_metrics(metrics: dict[str, dict[str, Any]], output_dir: str | Path) -> None:
    """``final_metrics.json`` and ``per_class.txt`` in ``output_dir``."""
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    write_json(output / "final_metrics.json", metrics)
    write_text(output / "per_class.txt", per_class_table(metrics) + "\n")
    logger.info("wrote %s", output / "final_metrics.json")
