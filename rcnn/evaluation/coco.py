"""COCO box and mask AP through the COCO API (pycocotools ``COCOeval``).

The numbers are pycocotools' own: this module only builds the ground truth (see ``coco_gt``),
converts detections to the results format and reads ``COCOeval.stats`` and its precision array.
Stats that pycocotools reports as -1 (no ground truth in that size range) are returned as NaN.
"""

from __future__ import annotations

import contextlib
import io
import logging
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from rcnn.evaluation.coco_gt import coco_from_records, quiet_coco
from rcnn.evaluation.results import (
    bbox_results,
    check_result_ids,
    detections_to_results,
    segm_results,
)
from rcnn.structures import Detections, Record

logger = logging.getLogger(__name__)

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
ALL_STAT_NAMES = (*STAT_NAMES, "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _empty_results(coco_gt: COCO) -> COCO:
    """A results object with no detections (``loadRes`` fails on an empty list)."""
    return quiet_coco(
        {
            "images": list(coco_gt.dataset["images"]),
            "categories": list(coco_gt.dataset["categories"]),
            "annotations": [],
        }
    )


def _stat(value: float) -> float:
    return float("nan") if value < 0 else float(value)


def per_class_ap(coco_eval: COCOeval) -> dict[int, float]:
    """AP@[.5:.95] per category id from ``coco_eval.eval["precision"]`` (all areas, 100 dets).

    The precision array is ``[T, R, K, A, M]`` (IoU thresholds, recall points, categories, area
    ranges, max detections); -1 marks "no ground truth", so a category without any is NaN.
    """
    precision = coco_eval.eval["precision"]
    per_class = {}
    for k, cat_id in enumerate(coco_eval.params.catIds):
        values = precision[:, :, k, 0, -1]
        values = values[values > -1]
        per_class[cat_id] = float(np.mean(values)) if values.size else float("nan")
    return per_class


def run_cocoeval(
    coco_gt: COCO,
    results: list[dict[str, Any]],
    iou_type: str,
    *,
    image_ids: list[Any] | None = None,
) -> tuple[dict[str, float], dict[int, float]]:
    """Score results with ``COCOeval``.

    Args:
        coco_gt: the ground truth.
        results: COCO result dicts prepared for ``iou_type`` (see ``results.bbox_results`` and
            ``results.segm_results``); they are modified by ``loadRes``.
        iou_type: ``"bbox"`` or ``"segm"``.
        image_ids: the images to score (default: every image of the ground truth).

    Returns:
        The 12 named stats of ``COCOeval.summarize`` (``ALL_STAT_NAMES``, NaN for -1) and the AP per
        category id.
    """
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        coco_dt = coco_gt.loadRes(results) if results else _empty_results(coco_gt)
        coco_eval = COCOeval(coco_gt, coco_dt, iou_type)
        if image_ids is not None:
            coco_eval.params.imgIds = sorted(image_ids)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    logger.debug("COCOeval %s:\n%s", iou_type, log.getvalue())
    stats = {name: _stat(v) for name, v in zip(ALL_STAT_NAMES, coco_eval.stats, strict=True)}
    return stats, per_class_ap(coco_eval)


def evaluate_coco_results(
    coco_gt: COCO,
    results: list[dict[str, Any]],
    *,
    iou_types: tuple[str, ...] = ("bbox", "segm"),
    image_ids: list[Any] | None = None,
    source: str = "results",
) -> dict[str, dict[str, Any]]:
    """COCO metrics of a results list against a ground truth, in the ``final_metrics`` layout.

    Segm is scored when the ground truth has segmentations and the results carry masks (or are
    empty: no detections score 0).

    Returns:
        ``{"bbox": {"AP", ..., "APl", "per_class": {name: AP}}, "segm": {...}}``.

    Raises:
        UserError: result image or category ids that the ground truth does not have.
    """
    check_result_ids(results, coco_gt.getImgIds(), coco_gt.getCatIds(), source)
    names = {c["id"]: str(c.get("name", c["id"])) for c in coco_gt.dataset["categories"]}
    gt_has_masks = any("segmentation" in a for a in coco_gt.dataset["annotations"])
    sizes = {img["id"]: (img["height"], img["width"]) for img in coco_gt.dataset["images"]}
    metrics: dict[str, dict[str, Any]] = {}
    masks_missing = results and not any("segmentation" in r for r in results)
    segm = None  # checked before any scoring: a bad mask is an error, not minutes of COCOeval
    if "segm" in iou_types and gt_has_masks and not masks_missing:
        segm = segm_results(results, sizes, source)
    for iou_type in iou_types:
        if iou_type == "segm":
            if segm is None:
                logger.info("no masks in the ground truth or the results: segm AP skipped")
                continue
            prepared = segm
        else:
            prepared = bbox_results(results)
        stats, per_class = run_cocoeval(coco_gt, prepared, iou_type, image_ids=image_ids)
        metrics[iou_type] = {name: stats[name] for name in STAT_NAMES}
        metrics[iou_type]["per_class"] = {names[k]: v for k, v in per_class.items()}
    return metrics


class COCOEvaluator:
    """COCO AP for detections of a dataset whose ground truth is its records.

    Args:
        records: the dataset's records (``ignore`` = crowd).
        class_names: one name per label.
        label_to_category_id: label -> the category id written in results.
        iou_types: ``"bbox"`` and/or ``"segm"``; segm is skipped when a processed ``Detections``
            has ``masks=None`` (a box-only model).
        stated_areas: the source json's areas by annotation id (see ``coco_gt``), so that COCO's
            own files give the official small / medium / large numbers.

    Only the images passed to ``process`` are scored (all of them when none was), so that a
    partial run (``--max-images``, a shard) is not charged for the images it never saw.
    """

    def __init__(
        self,
        records: list[Record],
        class_names: list[str],
        label_to_category_id: list[int],
        *,
        iou_types: tuple[str, ...] = ("bbox", "segm"),
        stated_areas: dict[int, float] | None = None,
    ) -> None:
        self.coco_gt = coco_from_records(
            records, class_names, label_to_category_id, stated_areas=stated_areas
        )
        self.class_names = list(class_names)
        self.label_to_category_id = [int(c) for c in label_to_category_id]
        self.iou_types = tuple(iou_types)
        self._known_images = set(self.coco_gt.getImgIds())
        self.reset()

    def reset(self) -> None:
        """Forget every processed detection."""
        self._results: dict[Any, list[dict[str, Any]]] = {}
        self._masks_missing = False

    def process(self, image_ids: list[Any], detections: list[Detections]) -> None:
        """Add the detections of some images (a later call for the same image replaces it)."""
        for image_id, dets in zip(image_ids, detections, strict=True):
            if image_id not in self._known_images:
                raise ValueError(f"image id {image_id!r} is not in the evaluator's records")
            self._masks_missing |= dets.masks is None
            self._results[image_id] = detections_to_results(
                image_id, dets, self.label_to_category_id
            )

    def state(self) -> dict[str, Any]:
        """The processed detections (picklable), for gathering from other processes."""
        return {"results": self._results, "masks_missing": self._masks_missing}

    def merge_state(self, state: dict[str, Any]) -> None:
        """Add the detections of another evaluator's ``state()``."""
        self._results.update(state["results"])
        self._masks_missing |= state["masks_missing"]

    @property
    def results(self) -> list[dict[str, Any]]:
        """Every processed detection in the COCO results format (json-ready)."""
        return [r for image_results in self._results.values() for r in image_results]

    def evaluate(self) -> dict[str, dict[str, Any]]:
        """``{"bbox": {"AP","AP50","AP75","APs","APm","APl","per_class"}, "segm": {...}}``."""
        image_ids = list(self._results) or None
        iou_types = self.iou_types
        if self._masks_missing:  # a box-only model: no segm AP
            iou_types = tuple(t for t in iou_types if t != "segm")
        metrics = evaluate_coco_results(
            self.coco_gt, self.results, iou_types=iou_types, image_ids=image_ids
        )
        for iou_type, values in metrics.items():
            logger.info("%s AP %.4f AP50 %.4f", iou_type, values["AP"], values["AP50"])
        return metrics
