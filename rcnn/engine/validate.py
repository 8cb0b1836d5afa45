"""Periodic validation: the dataset's metric (COCO AP or VOC mAP) and the validation loss.

Validation never changes the training trajectory: it runs under ``torch.random.fork_rng`` (the
model's RoI sampling in the loss pass draws random numbers) and with normalisation layers in eval
mode (running statistics are not updated by validation images).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from rcnn.engine import distributed as du
from rcnn.engine.distributed import DistContext
from rcnn.engine.inference import first_images, predict_dataset
from rcnn.evaluation import build_evaluator, primary_metric

logger = logging.getLogger(__name__)
EvaluateFn = Callable[[nn.Module, Any, DistContext], "dict | None"]


def evaluate_detections(
    model: nn.Module,
    dataset: Any,
    ctx: DistContext,
    *,
    num_workers: int = 0,
    max_images: int = 0,
) -> dict | None:
    """Predict the images of ``dataset`` (raw, no transform; the first ``max_images`` when > 0)
    and score them, and only them, on the main rank."""
    evaluator = build_evaluator(dataset)
    evaluator.reset()
    images = first_images(dataset, max_images)
    # streamed: each batch is scored at once, so a dataset's full-size masks are never all held
    predicted = predict_dataset(
        model, images, num_workers=num_workers, distributed=ctx.distributed, evaluator=evaluator
    )
    if ctx.is_main and not predicted:
        logger.warning("validation skipped: none of the %d val images could be read", len(images))
        return None
    return evaluator.evaluate() if ctx.is_main else None


def default_primary(metrics: dict) -> float:
    return float(primary_metric(metrics))


class Validator:
    """Runs the evaluation and the loss pass; the primary metric is shared with every rank.

    Args:
        dataset: the validation dataset without transform (the model resizes raw images).
        evaluate_fn: ``(model, dataset, ctx) -> metrics dict`` on the main rank, None elsewhere.
        metric_fn: ``metrics -> float``, the number the best checkpoint is kept by.
        loss_dataset: the validation images with a transform giving training-size images and
            targets (None: no validation loss).
        loss_batches: how many of its images (over all ranks) the loss pass uses (0: none).
    """

    def __init__(
        self,
        dataset: Any,
        *,
        evaluate_fn: EvaluateFn = evaluate_detections,
        metric_fn: Callable[[dict], float] = default_primary,
        loss_dataset: Any = None,
        loss_batches: int = 0,
    ) -> None:
        self.dataset = dataset
        self.evaluate_fn = evaluate_fn
        self.metric_fn = metric_fn
        self.loss_dataset = loss_dataset
        self.loss_batches = loss_batches

    def run(self, model: nn.Module, ctx: DistContext) -> tuple[dict | None, float | None]:
        """Returns ``(metrics on the main rank else None, primary metric on every rank)``."""
        devices = [ctx.device] if ctx.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            has_eval = self.dataset is not None
            metrics = self.evaluate_fn(model, self.dataset, ctx) if has_eval else None
            primary = self.metric_fn(metrics) if metrics else None
            has_loss = self.loss_dataset is not None and self.loss_batches > 0
            loss = self._loss(model, ctx) if has_loss else None
        if ctx.is_main and loss is not None:
            metrics = {**(metrics or {}), "loss": loss}
        return metrics, du.broadcast_object(primary)

    @torch.no_grad()
    def _loss(self, model: nn.Module, ctx: DistContext) -> dict[str, float]:
        """Mean loss terms over the first ``loss_batches`` images (sharded over ranks)."""
        count = min(self.loss_batches, len(self.loss_dataset))
        indices = range(ctx.rank, count, ctx.world_size)
        sums: dict[str, torch.Tensor] = {}
        used = 0
        with _train_mode_frozen_norms(model):
            for index in indices:
                sample = self.loss_dataset[index]
                if sample is None:  # unreadable image: counted by the loaders elsewhere
                    continue
                image, target = sample
                used += 1
                target = target.to(ctx.device) if hasattr(target, "to") else target
                outputs = model([image.to(ctx.device)], [target])
                for key, value in outputs.items():
                    if key.startswith("loss_"):
                        sums[key] = sums.get(key, 0.0) + value.detach().float()
        means = {k: v / max(1, used) for k, v in sums.items()}
        keys = du.broadcast_object(sorted(means))
        means = {k: means.get(k, torch.zeros((), device=ctx.device)) for k in keys}
        reduced = du.all_reduce_mean(means)
        result = {k: float(v) for k, v in reduced.items()}
        result["loss"] = sum(result.values())
        return result


@contextlib.contextmanager
def _train_mode_frozen_norms(model: nn.Module):
    """Train mode (the loss branch of ``forward``) with BatchNorm statistics left untouched."""
    was_training = model.training
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
    try:
        yield
    finally:
        model.train(was_training)
