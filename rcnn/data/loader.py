"""Train and test loaders: batches of ``(list[uint8 Tensor [3,H,W]], list[Targets])``.

The train sampler is infinite and deterministic given ``(seed, rank, world_size)``: each epoch is a
permutation drawn from ``(seed, epoch)``, padded to a multiple of ``world_size`` and strided by
rank; images are grouped into batches of one aspect class (landscape ``w >= h`` or portrait) with
leftovers carried into the next epoch, as Detectron2's grouped sampler does. Each sample carries
its own seed derived from ``(seed, epoch, rank, position)``, so augmentation does not depend on the
number of workers; workers are also seeded from ``(seed, rank, worker id)``. ``start_iter`` skips
batches without loading them. Unreadable images come back as None and are dropped from their
batch with a counted warning.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from rcnn.errors import DatasetError
from rcnn.structures import Targets

logger = logging.getLogger(__name__)

Batch = tuple[list[Tensor], list[Targets]]
MAX_EMPTY_BATCHES = 100  # consecutive all-unreadable batches before giving up


def _mix(*values: int) -> int:
    return int(np.random.SeedSequence([v % (2**32) for v in values]).generate_state(1)[0])


class TrainBatchSampler:
    """Infinite, seeded, sharded, aspect-ratio grouped batches of ``(index, sample_seed)``."""

    def __init__(
        self,
        aspect_ratios: Sequence[float],
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        aspect_grouping: bool = True,
        start_iter: int = 0,
    ) -> None:
        if not aspect_ratios:
            raise DatasetError("cannot sample batches from an empty dataset")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        groups = (
            [int(r < 1.0) for r in aspect_ratios] if aspect_grouping else [0] * len(aspect_ratios)
        )
        self.groups = groups
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.start_iter = int(start_iter)

    def epoch_indices(self, epoch: int) -> list[int]:
        """This rank's share of epoch ``epoch``'s permutation."""
        generator = torch.Generator().manual_seed(_mix(self.seed, epoch))
        order = torch.randperm(len(self.groups), generator=generator).tolist()
        padding = (-len(order)) % self.world_size
        order += order[:padding]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        buffers: dict[int, list[tuple[int, int]]] = {0: [], 1: []}
        iteration, epoch = 0, 0
        while True:
            for position, index in enumerate(self.epoch_indices(epoch)):
                buffer = buffers[self.groups[index]]
                buffer.append((index, _mix(self.seed, epoch, self.rank, position)))
                if len(buffer) == self.batch_size:
                    if iteration >= self.start_iter:
                        yield list(buffer)
                    buffer.clear()
                    iteration += 1
            epoch += 1


def collate(batch: list[Any]) -> Batch:
    """Keep lists (images differ in size); drop unreadable samples (None) with a warning."""
    images, targets, skipped = collate_counted(batch)
    if skipped:
        logger.warning("dropped %d unreadable image(s) from a batch", skipped)
    return images, targets


def collate_counted(batch: list[Any]) -> tuple[list[Tensor], list[Targets], int]:
    """``collate`` plus how many samples were dropped."""
    kept = [sample for sample in batch if sample is not None]
    return [s[0] for s in kept], [s[1] for s in kept], len(batch) - len(kept)


def _seed_worker(seed: int, rank: int, worker_id: int) -> None:
    worker_seed = _mix(seed, rank, worker_id)
    torch.manual_seed(worker_seed)
    np.random.seed(worker_seed)
    random.seed(worker_seed)


class _WorkerInit:
    def __init__(self, seed: int, rank: int) -> None:
        self.seed, self.rank = seed, rank

    def __call__(self, worker_id: int) -> None:
        _seed_worker(self.seed, self.rank, worker_id)


class Loader:
    """Iterates a ``DataLoader`` built on our collate; counts skipped images in ``num_skipped``."""

    def __init__(self, loader: DataLoader, num_batches: int | None) -> None:
        self.loader = loader
        self.num_batches = num_batches
        self.num_skipped = 0

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("the train loader is infinite")
        return self.num_batches

    def __iter__(self) -> Iterator[Batch]:
        empty_run = 0
        for images, targets, skipped in self.loader:
            if skipped:
                self.num_skipped += skipped
                logger.warning("skipped %d unreadable image(s) so far", self.num_skipped)
            if not images:
                empty_run += 1
                if self.num_batches is None and empty_run >= MAX_EMPTY_BATCHES:
                    raise DatasetError(f"{empty_run} batches in a row had no readable image")
                continue
            empty_run = 0
            yield images, targets


def _data_loader(dataset: Dataset, batch_sampler: Any, num_workers: int, init: Any) -> DataLoader:
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=num_workers,
        collate_fn=collate_counted,
        worker_init_fn=init if num_workers > 0 else None,
        persistent_workers=False,
    )


def build_train_loader(
    dataset: Any,
    *,
    batch_size: int,
    num_workers: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    aspect_grouping: bool = True,
    start_iter: int = 0,
) -> Loader:
    """An infinite loader of ``(list[uint8 Tensor], list[Targets])`` for one rank."""
    sampler = TrainBatchSampler(
        dataset.aspect_ratios(),
        batch_size,
        seed=seed,
        rank=rank,
        world_size=world_size,
        aspect_grouping=aspect_grouping,
        start_iter=start_iter,
    )
    return Loader(_data_loader(dataset, sampler, num_workers, _WorkerInit(seed, rank)), None)


def build_test_loader(
    dataset: Any, *, batch_size: int = 1, num_workers: int = 0, rank: int = 0, world_size: int = 1
) -> Loader:
    """Every image of this rank's shard (indices ``rank::world_size``) once, in order."""
    indices = list(range(rank, len(dataset), world_size))
    batches = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    return Loader(_data_loader(dataset, batches, num_workers, _WorkerInit(0, rank)), len(batches))
