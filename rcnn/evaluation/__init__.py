"""Evaluation: COCO AP (pycocotools), VOC07/VOC12 mAP, and analysis plots and tables.

Evaluators share one interface: ``reset()``, ``process(image_ids, detections)``,
``evaluate() -> dict`` (docs/CONTRACTS.md, "evaluation").
"""

from __future__ import annotations

import math
from typing import Any

from rcnn.evaluation.coco import COCOEvaluator, evaluate_coco_results
from rcnn.evaluation.coco_gt import stated_areas
from rcnn.evaluation.voc import VOCEvaluator

__all__ = [
    "COCOEvaluator",
    "VOCEvaluator",
    "build_evaluator",
    "evaluate_coco_results",
    "primary_metric",
]


def build_evaluator(dataset: Any) -> COCOEvaluator | VOCEvaluator:
    """The evaluator that ``dataset.metric`` names (``"coco"`` or ``"voc"``).

    COCO-style data is scored for boxes, and for masks too when ``dataset.has_masks``; the areas
    that a source json states are kept where they agree with the masks (``coco_gt``).
    """
    if dataset.metric == "voc":
        return VOCEvaluator(dataset.records, dataset.class_names)
    if dataset.metric == "coco":
        iou_types = ("bbox", "segm") if dataset.has_masks else ("bbox",)
        source = str(getattr(dataset, "source", "") or "")
        return COCOEvaluator(
            dataset.records,
            dataset.class_names,
            dataset.label_to_category_id,
            iou_types=iou_types,
            stated_areas=stated_areas(source) if source.endswith(".json") else None,
        )
    raise ValueError(f"unknown dataset metric {dataset.metric!r} (expected 'coco' or 'voc')")


def primary_metric(metrics: dict[str, dict[str, Any]]) -> float:
    """The number the best checkpoint is kept by: segm AP, else bbox AP, else VOC07 mAP.

    NaN (nothing to score) reads as 0.0 so that comparisons stay well defined.
    """
    for key, name in (("segm", "AP"), ("bbox", "AP"), ("voc07", "mAP")):
        if key in metrics:
            value = float(metrics[key][name])
            return 0.0 if math.isnan(value) else value
    raise KeyError(f"no segm, bbox or voc07 metrics in {sorted(metrics)}")
