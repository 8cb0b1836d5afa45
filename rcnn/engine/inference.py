"""Run a model over a dataset: the detections of every image, gathered on rank 0.

The dataset should have no transform: in eval mode the model takes raw uint8 images and returns
detections in their coordinates (docs/CONTRACTS.md), which is what the evaluators score.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from rcnn.structures import Detections

logger = logging.getLogger(__name__)


def _collate(batch: list[tuple[torch.Tensor, Any]]) -> list[tuple[torch.Tensor, Any]]:
    return batch


def _image_id(dataset: Any, index: int, targets: Any) -> Any:
    if hasattr(targets, "image_id"):
        return targets.image_id
    return dataset.records[index].image_id


def _rank_world(distributed: bool) -> tuple[int, int]:
    if distributed and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if distributed:
        logger.warning("distributed=True but torch.distributed is not initialised: one process")
    return 0, 1


def _predict_indices(
    model: torch.nn.Module,
    dataset: Any,
    indices: list[int],
    *,
    batch_size: int,
    num_workers: int,
    show_progress: bool,
    evaluator: Any = None,
) -> list[tuple[int, Any, Detections]]:
    """``(dataset index, image id, detections on the CPU)`` for each of ``indices``; with an
    ``evaluator`` each batch is processed into it at once and only the boxes are kept."""
    loader = DataLoader(
        Subset(dataset, indices),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate,
    )
    outputs = []
    position, skipped = 0, []
    with tqdm(total=len(indices), desc="predict", unit="img", disable=not show_progress) as bar:
        for batch in loader:
            # an unreadable image (None) is skipped: not predicted, not scored, counted
            where = [indices[position + i] for i in range(len(batch))]
            position += len(batch)
            bar.update(len(batch))
            skipped += [index for index, sample in zip(where, batch, strict=True) if sample is None]
            kept = [(i, s) for i, s in zip(where, batch, strict=True) if s is not None]
            if not kept:
                continue
            detections = [dets.to("cpu") for dets in model([s[0] for _, s in kept])]
            ids = [_image_id(dataset, index, sample[1]) for index, sample in kept]
            if evaluator is not None:
                evaluator.process(ids, detections)
                detections = [replace(dets, masks=None) for dets in detections]
            for (index, _), image_id, dets in zip(kept, ids, detections, strict=True):
                outputs.append((index, image_id, dets))
    if skipped:
        logger.warning(
            "%d unreadable image(s) skipped (not predicted, not scored), dataset indices %s",
            len(skipped),
            skipped[:10],
        )
    return outputs


def _gather_on_rank_zero(outputs: list, evaluator: Any, rank: int, world_size: int) -> list:
    """Every rank's outputs (in dataset order) and evaluator state on rank 0; ``[]`` elsewhere."""
    gathered: list[Any] = [None] * world_size
    state = None if evaluator is None else evaluator.state()
    dist.all_gather_object(gathered, (outputs, state))
    if rank != 0:
        return []
    if evaluator is not None:
        for _, other_state in gathered[1:]:
            evaluator.merge_state(other_state)
    return sorted((item for part, _ in gathered for item in part), key=lambda item: item[0])


def first_images(dataset: Any, count: int) -> Any:
    """The first ``count`` images of ``dataset`` (a ``Subset``), or ``dataset`` itself when
    ``count`` is 0 or covers it all. Evaluators score only the images they are given."""
    if 0 < count < len(dataset):
        return Subset(dataset, range(count))
    return dataset


def predict_dataset(
    model: torch.nn.Module,
    dataset: Any,
    *,
    batch_size: int = 1,
    num_workers: int = 0,
    distributed: bool = False,
    evaluator: Any = None,
) -> list[tuple[Any, Detections]]:
    """Detections of every image of ``dataset``, in dataset order.

    Args:
        model: in eval mode ``model(list of uint8 [3,H,W]) -> list[Detections]``; it is put in
            eval mode for the run and back in its former mode afterwards.
        dataset: ``dataset[i] -> (uint8 image [3,H,W], Targets)``; the image id comes from
            ``Targets.image_id`` (else ``dataset.records[i].image_id``).
        batch_size: images per model call.
        num_workers: data-loading worker processes.
        distributed: rank r of W predicts images ``r::W`` and rank 0 gathers everything with
            ``torch.distributed.all_gather_object`` (every rank must call this).
        evaluator: optional (an addition to the contract, for large datasets): an evaluator that
            each batch is processed into as soon as it is predicted (masks RLE-encoded at once),
            gathered into rank 0's evaluator; the returned detections then have ``masks=None``,
            so full-resolution masks of a whole dataset are never held in memory.

    Returns:
        ``[(image id, Detections on the CPU)]`` on rank 0 (and without distribution); ``[]`` on the
        other ranks.
    """
    rank, world_size = _rank_world(distributed)
    indices = list(range(rank, len(dataset), world_size))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            outputs = _predict_indices(
                model,
                dataset,
                indices,
                batch_size=batch_size,
                num_workers=num_workers,
                show_progress=rank == 0,
                evaluator=evaluator,
            )
    finally:
        model.train(was_training)
    if world_size > 1:
        outputs = _gather_on_rank_zero(outputs, evaluator, rank, world_size)
    return [(image_id, dets) for _, image_id, dets in outputs]
