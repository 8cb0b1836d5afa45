"""From a resolved config to a finished run: datasets, model, checks, ``train``, final outputs.

``prepare`` does every check that can fail on user input (dataset path, empty dataset, classes
against a resumed checkpoint) before any long work; ``run_process`` trains in one process of a
run (every rank calls it); ``finish`` writes ``final_metrics.json`` and ``predictions.png``.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rcnn.config import TrainConfig
from rcnn.data import TrainTransform, ValTransform, build_dataset
from rcnn.data.build import DATASET_OPTIONS
from rcnn.engine.checkpoint import load_model
from rcnn.engine.distributed import DistContext, parse_gpus
from rcnn.engine.precision import resolve_amp
from rcnn.engine.train import TrainResult, train
from rcnn.engine.validate import Validator, evaluate_detections
from rcnn.errors import UserError
from rcnn.fileio import write_text
from rcnn.models.build import build_model
from rcnn.models.fast import optimize
from rcnn.visualize import draw_instances
from rcnn.weights import load_state_dict_checked

logger = logging.getLogger(__name__)
FINAL_KEYS = ("bbox", "segm", "voc07", "voc12")


@dataclass
class Datasets:
    """The train set (with ``TrainTransform``), the raw val set, and the val set for the loss."""

    train: Any
    val: Any
    val_loss: Any


def build_datasets(cfg: TrainConfig) -> Datasets:
    """Read (or, for shapes, generate) the datasets; ``UserError`` for an empty one."""

    size = cfg.model.input
    transform = TrainTransform(
        size.train_short,
        size.max_size,
        short_mode=size.short_mode,
        flip_prob=cfg.flip_prob,
        color_jitter=cfg.color_jitter,
        scale_jitter=tuple(cfg.scale_jitter) or None,
        rounding=size.train_rounding,
    )
    options = _dataset_options(cfg)
    train_set = build_dataset(
        cfg.dataset, "train", data_root=cfg.data_root, transform=transform, **options
    )
    val_set = build_dataset(cfg.dataset, "val", data_root=cfg.data_root, **options)
    for split, dataset in (("train", train_set), ("val", val_set)):
        if len(dataset) == 0:
            raise UserError(
                f"dataset {cfg.dataset} ({dataset.source}): the {split} split has no images "
                "after filtering (images without objects are skipped for training unless "
                "--keep-empty)"
            )
    if len(train_set) < cfg.batch_size:
        logger.warning(
            "the train split has %d images, fewer than batch_size %d",
            len(train_set),
            cfg.batch_size,
        )
    val_loss = copy.copy(val_set)  # same records, training-size images for the loss pass
    val_loss.transform = ValTransform(size.test_short, size.max_size)
    return Datasets(train_set, val_set, val_loss)


def _dataset_options(cfg: TrainConfig) -> dict[str, Any]:
    """``cfg.dataset_options`` checked against what ``build_dataset`` takes."""
    known = DATASET_OPTIONS["shapes" if cfg.dataset == "shapes" else "other"]
    for key, value in cfg.dataset_options.items():
        if key not in known:
            raise UserError(
                f"dataset_options: unknown option {key!r} for dataset {cfg.dataset}; valid: "
                + ", ".join(known)
            )
        if value is None:
            raise UserError(f"dataset_options.{key} has no value (yaml needs 'key: value')")
    return dict(cfg.dataset_options)


def set_classes(cfg: TrainConfig, datasets: Datasets, resume_state: dict | None) -> None:
    """Classes from the dataset into the model config, checked against the data and checkpoint.

    The classes must match a resumed checkpoint's, and a mask model needs masks in the data.
    """
    names = tuple(datasets.train.class_names)
    if tuple(datasets.val.class_names) != names:
        raise UserError(
            f"dataset {cfg.dataset}: train classes {list(names)} differ from val classes "
            f"{list(datasets.val.class_names)}"
        )
    if resume_state is not None and tuple(resume_state["class_names"]) != names:
        raise UserError(
            f"the classes of dataset {cfg.dataset} {list(names)} do not match the checkpoint's "
            f"{list(resume_state['class_names'])}"
        )
    if cfg.model.mask_on and not datasets.train.has_masks:
        raise UserError(
            f"network {cfg.network} predicts masks but dataset {cfg.dataset} has no masks; "
            "use a faster_rcnn network or --set model.mask_on=false"
        )
    cfg.model.classes = names
    mapping = getattr(datasets.train, "label_to_category_id", None)
    cfg.model.category_ids = tuple(int(c) for c in mapping) if mapping else ()


def build_train_model(cfg: TrainConfig, *, initial_weights: bool = True) -> torch.nn.Module:
    """``cfg.model``'s network (from ``cfg.weights`` when set and ``initial_weights``), with the
    speed options when ``cfg.fast`` or when it trains under bf16 autocast on the CPU (bf16
    convolutions pay there only in channels-last: issue 10)."""
    if cfg.weights:  # every weight comes from the file: no ImageNet initialisation to read
        cfg.model.backbone.pretrained_base = False
    model = build_model(cfg.model)
    if cfg.weights and initial_weights:
        load_initial_weights(model, cfg.weights)
    cpu_bf16 = not parse_gpus(cfg.gpus) and resolve_amp(cfg.amp, torch.device("cpu")) is not None
    return optimize(model) if cfg.fast or cpu_bf16 else model


def load_initial_weights(model: torch.nn.Module, path: str) -> None:
    """Start from the weights of checkpoint ``path`` (``rcnn train --weights``; e.g. a peer's
    weights after ``rcnn convert``). Class rows carry over by name (GluonCV's ``reset_class``);
    classes the checkpoint lacks start fresh. Any other mismatch is a ``CheckpointError``."""
    donor = load_model(path)
    if donor.class_names != model.class_names:
        kept = [name for name in model.class_names if name in donor.class_names]
        logger.info("--weights %s: %d of %d classes carry over", path, len(kept), model.num_classes)
        donor.reset_class(model.class_names, reuse_weights=kept)
    load_state_dict_checked(model, donor.state_dict(), source=path)


def run_process(
    cfg: TrainConfig,
    ctx: DistContext,
    run_dir: Path,
    *,
    datasets: Datasets | None = None,
    resume_state: dict | None = None,
) -> TrainResult:
    """Build the model and train it in this process (any rank)."""
    datasets = datasets or build_datasets(cfg)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = build_train_model(cfg, initial_weights=resume_state is None)
    validator = Validator(
        datasets.val,
        evaluate_fn=functools.partial(
            evaluate_detections, num_workers=cfg.num_workers, max_images=cfg.val_max_images
        ),
        loss_dataset=datasets.val_loss,
        loss_batches=cfg.val_loss_batches,
    )
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        return train(
            cfg,
            model,
            datasets.train,
            run_dir=run_dir,
            ctx=ctx,
            validator=validator,
            resume_state=resume_state,
        )
    finally:
        torch.use_deterministic_algorithms(was_deterministic)


def finish(cfg: TrainConfig, run_dir: Path, result: TrainResult, datasets: Datasets) -> dict:
    """Write ``final_metrics.json`` and ``predictions.png``; return a summary for the CLI."""
    metrics = _json_safe({k: v for k, v in (result.metrics or {}).items() if k in FINAL_KEYS})
    # the metrics come from the last checkpoint when a finished run is resumed (rcnn.engine.train
    # saves them with it), so a kill between last.pth and this file loses nothing
    write_text(
        run_dir / "final_metrics.json", json.dumps(metrics, indent=2, allow_nan=False) + "\n"
    )
    picture = run_dir / "predictions.png"
    try:
        draw_predictions(run_dir / "last.pth", datasets.val, picture, count=cfg.vis_images)
    except Exception as error:  # a picture never fails a finished run
        logger.warning("could not draw predictions: %s", error)
        picture = None
    summary = {
        "run_dir": str(run_dir),
        "iterations": result.iterations,
        "wall_time_s": round(result.wall_time, 1),
        "best_metric": result.best_metric,
        "best_iteration": result.best_iteration,
        "stopped_early": result.stopped_early,
        "metrics": metrics,
        "val_loss": (result.metrics or {}).get("loss", {}).get("loss"),
        "picture": str(picture) if picture else None,
    }
    write_text(run_dir / "summary.json", json.dumps(_json_safe(summary), indent=2) + "\n")
    return summary


def _json_safe(tree: Any) -> Any:
    """NaN/inf (e.g. COCO's AP of an absent size range) become null: strict JSON."""
    if isinstance(tree, dict):
        return {k: _json_safe(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_json_safe(v) for v in tree]
    if isinstance(tree, float) and not math.isfinite(tree):
        return None
    return tree


@torch.no_grad()
def draw_predictions(checkpoint: Path, dataset: Any, path: Path, *, count: int = 4) -> None:
    """The final model's detections on the first ``count`` val images, tiled into one picture."""
    from PIL import Image

    model = load_model(checkpoint)
    pictures = []
    for index in range(min(count, len(dataset))):
        sample = dataset[index]
        if sample is None:  # an unreadable image (counted by the loader elsewhere)
            continue
        image = sample[0]
        detections = model([image])[0]
        pictures.append(draw_instances(image, detections, model.class_names, score_thresh=0.5))
    if not pictures:
        return
    columns = min(len(pictures), 4)
    rows = math.ceil(len(pictures) / columns)
    width = max(p.width for p in pictures)
    height = max(p.height for p in pictures)
    sheet = Image.new("RGB", (columns * width, rows * height), "white")
    for i, picture in enumerate(pictures):
        sheet.paste(picture, ((i % columns) * width, (i // columns) * height))
    sheet.save(path)
