"""``DetectionDataset``: records + image reading + an optional transform."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from rcnn.data.images import UnreadableImageError, read_image
from rcnn.data.records import ParsedDataset
from rcnn.data.transforms import resize_targets
from rcnn.errors import DatasetError
from rcnn.structures import Record, Targets

logger = logging.getLogger(__name__)

Transform = Callable[..., tuple[Tensor, Targets]]


def targets_from_record(record: Record) -> Targets:
    """The ``Targets`` of a record in its original image coordinates."""
    size = (record.height, record.width)
    return Targets(
        boxes=torch.as_tensor(record.boxes, dtype=torch.float32).reshape(-1, 4),
        labels=torch.as_tensor(record.labels, dtype=torch.int64),
        ignore=torch.as_tensor(record.ignore, dtype=torch.bool),
        image_id=record.image_id,
        image_size=size,
        orig_size=size,
        masks=list(record.masks) if record.masks is not None else None,
    )


def _log_problems(parsed: ParsedDataset) -> None:
    counts = parsed.problem_counts()
    if counts:
        summary = ", ".join(f"{kind}={count}" for kind, count in sorted(counts.items()))
        logger.warning(
            "%s: %d annotation problem(s) repaired or dropped (%s); `rcnn check` lists them",
            parsed.source,
            sum(counts.values()),
            summary,
        )
    if parsed.num_skipped_empty:
        logger.info(
            "%s: %d image(s) without objects skipped", parsed.source, parsed.num_skipped_empty
        )


class DetectionDataset(Dataset):
    """Annotated images; ``ds[i] -> (uint8 image [3,H,W], Targets)`` or None if unreadable.

    ``ds[(i, seed)]`` does the same with the transform's randomness drawn from ``seed`` (the train
    loader does this so that augmentation does not depend on the number of workers).

    Attributes:
        records, class_names, label_to_category_id, metric, has_masks, source: see CONTRACTS.md.
        parsed: the ``ParsedDataset`` (problems found while reading the annotations).
    """

    def __init__(self, parsed: ParsedDataset, transform: Transform | None = None) -> None:
        if parsed.missing_images:
            first, count = parsed.missing_images[0], len(parsed.missing_images)
            raise DatasetError(
                f"{first}: image file not found ({count} missing in {parsed.source})"
            )
        if not parsed.records:
            raise DatasetError(f"{parsed.source}: no usable images")
        self.parsed = parsed
        self.records: list[Record] = parsed.records
        self.class_names: list[str] = parsed.class_names
        self.label_to_category_id: list[int] = parsed.label_to_category_id
        self.metric: str = parsed.metric
        self.has_masks: bool = parsed.has_masks
        self.source: str = parsed.source
        self.transform = transform
        _log_problems(parsed)

    def __len__(self) -> int:
        return len(self.records)

    def aspect_ratios(self) -> list[float]:
        """Width / height of every image (from the annotations, no pixels read)."""
        return [r.width / r.height if r.height else 1.0 for r in self.records]

    def load(self, index: int) -> tuple[Tensor, Targets] | None:
        """The image as on disk (RGB, EXIF applied) and its targets, or None when unreadable."""
        record = self.records[index]
        try:
            image = read_image(record.image_path, (record.height, record.width))
        except UnreadableImageError as error:
            logger.warning("skipping image: %s", error)
            return None
        targets = targets_from_record(record)
        actual = (int(image.shape[1]), int(image.shape[2]))
        if actual != targets.image_size:
            # documented repair: annotations rescaled to the pixels actually decoded
            targets = replace(resize_targets(targets, actual, 1.0), orig_size=actual)
        return image, targets

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        index, seed = key if isinstance(key, tuple) else (key, None)
        sample = self.load(index)
        if sample is None or self.transform is None:
            return sample
        generator = None
        if seed is not None:
            generator = torch.Generator().manual_seed(int(seed))
        return self.transform(*sample, generator=generator)

    def __repr__(self) -> str:
        return (
            f"DetectionDataset({self.source!r}, images={len(self)}, "
            f"classes={len(self.class_names)}, "
            f"metric={self.metric!r}, masks={self.has_masks})"
        )
