"""`rcnn eval`: COCO AP or VOC07/VOC12 mAP of a checkpoint on a dataset, or of a detections file.

Model mode:   rcnn eval --checkpoint CKPT --dataset SPEC [--data-root DIR] [--split val]
              rcnn eval --torchvision NAME [--weights FILE] --dataset SPEC ...
              A checkpoint evaluated on its run's dataset (--dataset as the run's, --split val)
              sees the run's validation data: its data root, dataset options (shapes: seed,
              sizes, counts) and val_max_images, unless --data-root / --max-images say otherwise;
              so RUN/last.pth re-scores to the AP of RUN/final_metrics.json.
Results mode: rcnn eval --results DETS.json --coco ANN.json   (or --voc ROOT)

Prints the metrics, per-class AP and precision/recall/F1 at ``--score-thresh`` (``--json``: only
the metrics, in the ``final_metrics.json`` layout). With ``--output DIR`` it also writes
``final_metrics.json``, ``per_class.txt``, ``results.json`` (model mode), ``prf_at_T.{json,txt}``,
``pr_curves.png`` and ``confusion_matrix.png``. Under torchrun, every rank predicts its share of the
images and rank 0 evaluates.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rcnn.cli.data_options import add_data_arguments, data_options
from rcnn.cli.model_source import (
    add_model_arguments,
    add_tile_arguments,
    has_model,
    load_model,
    tiled,
)
from rcnn.data import build_dataset
from rcnn.engine.checkpoint import load_checkpoint
from rcnn.engine.inference import first_images, predict_dataset
from rcnn.engine.relabel import on_dataset_labels
from rcnn.errors import UserError
from rcnn.evaluation import build_evaluator
from rcnn.evaluation.coco import evaluate_coco_results
from rcnn.evaluation.coco_gt import load_coco_json, quiet_coco, records_from_coco
from rcnn.evaluation.report import (
    json_safe,
    metrics_summary,
    per_class_table,
    results_to_arrays,
    write_analysis,
    write_json,
    write_metrics,
)
from rcnn.evaluation.results import check_result_ids, detections_to_results, load_results
from rcnn.evaluation.voc import VOCEvaluator, detections_to_arrays
from rcnn.fileio import output_folder

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n", 1)[1].strip()
    model = parser.add_argument_group("model mode")
    add_model_arguments(model)
    add_tile_arguments(model)
    model.add_argument(
        "--dataset", help="shapes | coco | voc | a path: COCO, VOC, labelme, PNG masks, YOLO"
    )
    model.add_argument("--data-root", help="root folder of the coco / voc datasets")
    model.add_argument(
        "--split", default="val", choices=["train", "val", "all"],
        help="default: val (a single annotation set: its hold-out; all: every image)",
    )  # fmt: skip
    model.add_argument("--batch-size", type=int, default=1, help="images per forward pass")
    model.add_argument("--num-workers", type=int, default=0, help="data-loading processes")
    parser.add_argument(
        "--max-images",
        type=int,
        help="evaluate only the first N images, in both modes (0: all; default: all, "
        "or the run's val_max_images for its own validation data)",
    )
    model.add_argument(
        "--allow-outside-root",
        action="store_true",
        help="follow image paths that leave the dataset folder (../x.jpg, /abs/x.jpg)",
    )
    add_data_arguments(parser.add_argument_group("data (model mode and --voc)"))
    files = parser.add_argument_group("results mode")
    files.add_argument("--results", help="detections in the COCO results format (json list)")
    files.add_argument("--coco", help="COCO annotation json to score --results against")
    files.add_argument("--voc", help="VOC-style folder to score --results against (--split)")
    parser.add_argument("--output", help="folder for metrics json, tables, results and plots")
    parser.add_argument(
        "--score-thresh", type=float, default=0.5, help="score threshold for P/R/F1 and confusion"
    )
    parser.add_argument("--json", action="store_true", help="print only the metrics as json")


def _check_mode(args: argparse.Namespace) -> None:
    if args.results:
        if bool(args.coco) == bool(args.voc):
            raise UserError("--results needs exactly one of --coco ANN.json or --voc ROOT")
        if has_model(args):
            raise UserError("give either --results or a model (--checkpoint / --torchvision)")
    elif args.coco or args.voc:
        raise UserError("--coco / --voc score a detections file: give it with --results DETS.json")
    elif not (has_model(args) and args.dataset):
        raise UserError(
            "give --checkpoint CKPT --dataset SPEC (or --torchvision NAME --dataset SPEC), or "
            "--results DETS.json --coco ANN.json"
        )


def _print(args: argparse.Namespace, metrics: dict[str, Any], prf_table: str) -> None:
    if args.json:
        print(json.dumps(json_safe(metrics), indent=2))
        return
    print(metrics_summary(metrics))
    print()
    print(per_class_table(metrics))
    print()
    print(f"precision / recall / F1 at score >= {args.score_thresh:g}, IoU 0.5:")
    print(prf_table)


def _first_gt_images(coco_gt: Any, results: list[dict], args: argparse.Namespace):
    """The ground truth and results narrowed to the json's first ``--max-images`` images."""
    check_result_ids(results, coco_gt.getImgIds(), coco_gt.getCatIds(), args.results)
    images = coco_gt.dataset["images"][: args.max_images]
    keep = {image["id"] for image in images}
    data = dict(coco_gt.dataset, images=images)
    data["annotations"] = [a for a in coco_gt.dataset["annotations"] if a["image_id"] in keep]
    kept = [r for r in results if r["image_id"] in keep]
    logger.info(
        "--max-images %d: scoring the first %d images of %s (%d detections on other images left "
        "out)", args.max_images, len(images), args.coco, len(results) - len(kept),
    )  # fmt: skip
    return quiet_coco(data), kept


def _warn_uncovered(results: list[dict], image_ids: list, source: str) -> None:
    """Images the results never name count as images without detections: say so."""
    named = {r["image_id"] for r in results}
    missing = len(set(image_ids) - named)
    if results and missing:
        logger.warning(
            "%s names %d of the %d images; the other %d count as images without detections "
            "(--max-images N scores only the first N)",
            source, len(image_ids) - missing, len(image_ids), missing,
        )  # fmt: skip


def _eval_coco_file(args: argparse.Namespace) -> tuple[dict, list, dict, list[str]]:
    coco_gt = load_coco_json(args.coco)
    results = load_results(args.results)
    if args.max_images:
        coco_gt, results = _first_gt_images(coco_gt, results, args)
    _warn_uncovered(results, coco_gt.getImgIds(), args.results)
    metrics = evaluate_coco_results(coco_gt, results, source=args.results)
    records, class_names, category_ids = records_from_coco(coco_gt)
    category_to_label = {cid: label for label, cid in enumerate(category_ids)}
    return metrics, records, results_to_arrays(results, category_to_label), class_names


def _voc_image_ids(results: list[dict], records: list) -> None:
    """Let results name VOC images by file stem (``"raccoon-1"``, ``"000005"``) as well as by record
    image id (an integer; numeric stems are the ids themselves: ``000005`` is image 5)."""
    by_stem = {Path(r.file_name or r.image_path).stem: r.image_id for r in records}
    known = {r.image_id for r in records}
    for result in results:
        image_id = result["image_id"]
        if image_id not in known and str(image_id) in by_stem:
            result["image_id"] = by_stem[str(image_id)]


def _eval_voc_file(args: argparse.Namespace) -> tuple[dict, list, dict, list[str]]:
    dataset = build_dataset(args.voc, args.split, **data_options(args))
    results = load_results(args.results)
    records = dataset.records
    _voc_image_ids(results, records)
    category_ids = list(dataset.label_to_category_id)
    check_result_ids(results, [r.image_id for r in records], category_ids, args.results)
    if args.max_images:
        records = records[: args.max_images]
        keep = {r.image_id for r in records}
        results = [r for r in results if r["image_id"] in keep]
        logger.info("--max-images %d: scoring the first %d images", args.max_images, len(records))
    _warn_uncovered(results, [r.image_id for r in records], args.results)
    category_to_label = {cid: label for label, cid in enumerate(category_ids)}
    detections = results_to_arrays(results, category_to_label)
    empty = (np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64))
    evaluator = VOCEvaluator(records, dataset.class_names)
    evaluator.add_arrays({r.image_id: detections.get(r.image_id, empty) for r in records})
    return evaluator.evaluate(), records, detections, list(dataset.class_names)


def _init_distributed() -> bool:
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True


def _model_name(args: argparse.Namespace) -> str:
    return args.checkpoint or f"torchvision {args.torchvision} ({args.weights or 'hub cache'})"


def _same_dataset(saved: str | None, given: str) -> bool:
    """A run's dataset (stored absolute when it is a path) against ``--dataset`` as typed."""
    if saved is None or saved == given:
        return saved == given
    return os.path.exists(given) and os.path.abspath(given) == os.path.abspath(saved)


def run_validation_data(args: argparse.Namespace) -> tuple[str | None, dict[str, Any], int]:
    """(data root, dataset options, max images) of the evaluation: the checkpoint's run's own
    validation settings when ``--dataset`` is the run's dataset and ``--split`` is val, with
    ``--data-root`` and ``--max-images`` winning where given; else the flags alone."""
    plain = (args.data_root, {}, args.max_images or 0)
    if not args.checkpoint or args.split != "val" or not Path(args.checkpoint).exists():
        return plain  # (a missing checkpoint was reported by load_model already)
    run = load_checkpoint(args.checkpoint).get("config") or {}
    if not _same_dataset(run.get("dataset"), args.dataset):
        return plain
    data_root = args.data_root or run.get("data_root")
    options = dict(run.get("dataset_options") or {})
    given = args.max_images is not None
    max_images = args.max_images if given else int(run.get("val_max_images") or 0)
    logger.info(
        "the run's validation data: %s (data root %s, options %s, first %s images)",
        args.dataset, data_root or "default", options or "none", max_images or "all",
    )  # fmt: skip
    return data_root, options, max_images


def _eval_model(args: argparse.Namespace) -> tuple[dict, list, dict, list[str]] | None:
    distributed = _init_distributed()
    model = load_model(args)
    data_root, options, max_images = run_validation_data(args)
    options.update(data_options(args))  # the flags win over the run's own settings
    options["allow_outside_root"] = args.allow_outside_root or options.get("allow_outside_root")
    dataset = build_dataset(args.dataset, args.split, data_root=data_root, **options)
    model = tiled(on_dataset_labels(model, dataset.class_names, source=_model_name(args)), args)
    subset = first_images(dataset, max_images)
    evaluator = build_evaluator(dataset)
    predictions = predict_dataset(
        model, subset, batch_size=args.batch_size, num_workers=args.num_workers,
        distributed=distributed, evaluator=evaluator,
    )  # fmt: skip
    if distributed and torch.distributed.get_rank() != 0:
        return None
    if not predictions:
        raise UserError(f"--dataset {args.dataset}: none of the {len(subset)} images could be read")
    if getattr(model, "dropped", 0):
        logger.info("%d detections of classes not in the dataset dropped", model.dropped)
    metrics = evaluator.evaluate()
    if args.output:
        results = getattr(evaluator, "results", None) or [
            r
            for image_id, dets in predictions
            for r in detections_to_results(image_id, dets, dataset.label_to_category_id)
        ]
        write_json(Path(args.output) / "results.json", results)
    detections = {image_id: detections_to_arrays(dets) for image_id, dets in predictions}
    records = [r for r in dataset.records if r.image_id in detections]
    return metrics, records, detections, list(dataset.class_names)


def _check_values(args: argparse.Namespace) -> None:
    """Out-of-range numbers and an unusable ``--output``: one-line errors before any work."""
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.num_workers < 0:
        raise UserError(f"--num-workers must be >= 0, got {args.num_workers}")
    if args.max_images is not None and args.max_images < 0:
        raise UserError(f"--max-images must be >= 0 (0: all), got {args.max_images}")
    if not 0.0 <= args.score_thresh <= 1.0:
        raise UserError(f"--score-thresh must be in [0, 1], got {args.score_thresh}")
    if args.output:
        output_folder(args.output)


def run(args: argparse.Namespace) -> int:
    _check_mode(args)
    _check_values(args)
    if args.results:
        outcome = _eval_coco_file(args) if args.coco else _eval_voc_file(args)
    else:
        outcome = _eval_model(args)
        if outcome is None:  # a rank other than 0
            return 0
    metrics, records, detections, class_names = outcome
    prf_table = write_analysis(
        records, detections, class_names, score_thresh=args.score_thresh, output_dir=args.output
    )
    if args.output:
        write_metrics(metrics, args.output)
    _print(args, metrics, prf_table)
    return 0
