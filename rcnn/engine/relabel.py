"""Score a model on a dataset whose class list differs from the model's: labels matched by name.

A model trained elsewhere may know the dataset's classes in another order, or more of them
(torchvision's COCO heads have 90 labels, ten of them unused ids, where a COCO json has 80
categories). Evaluating it as is would score label k against the dataset's class k: silently
wrong numbers. ``on_dataset_labels`` renumbers the model's labels into the dataset's by class
name and drops (and counts) detections of classes the dataset does not have; a dataset class
the model does not know is an error, since its AP would be a meaningless 0.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from rcnn.errors import UserError
from rcnn.structures import Detections

logger = logging.getLogger(__name__)


def dataset_label_index(
    model_classes: Sequence[str], dataset_classes: Sequence[str], *, source: str = "model"
) -> list[int] | None:
    """For each model label, the dataset label of the class with the same name (-1: none).

    Returns:
        None when the two lists are equal (nothing to renumber).

    Raises:
        UserError: dataset classes the model does not know, listed.
    """
    if list(model_classes) == list(dataset_classes):
        return None
    missing = [name for name in dataset_classes if name not in model_classes]
    if missing:
        raise UserError(
            f"{source}: the model does not know {len(missing)} of the dataset's classes "
            f"({', '.join(missing[:10])}{', ...' if len(missing) > 10 else ''}); its classes are "
            f"{list(model_classes)[:10]}{' ...' if len(model_classes) > 10 else ''}"
        )
    position = {name: label for label, name in enumerate(dataset_classes)}
    return [position.get(name, -1) for name in model_classes]


class DatasetLabels(nn.Module):
    """``model`` whose detections carry the dataset's labels (``dataset_label_index``).

    Detections of model classes that the dataset lacks are dropped; ``dropped`` counts them.
    Attributes and modes are the wrapped model's (``class_names`` become the dataset's).
    """

    def __init__(self, model: nn.Module, index: list[int], class_names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("index", torch.tensor(index, dtype=torch.int64), persistent=False)
        self.class_names = list(class_names)
        self.has_mask = getattr(model, "has_mask", False)
        self.dropped = 0

    def forward(self, images: list[torch.Tensor]) -> list[Detections]:
        return [self._relabel(dets) for dets in self.model(images)]

    def _relabel(self, dets: Detections) -> Detections:
        """Detections with labels in the dataset's numbering, those of other classes removed."""
        labels = self.index.to(dets.labels.device)[dets.labels]
        keep = labels >= 0
        self.dropped += int((~keep).sum())
        masks = None if dets.masks is None else dets.masks[keep]
        return Detections(dets.boxes[keep], dets.scores[keep], labels[keep], masks)


def on_dataset_labels(model: nn.Module, dataset_classes: Sequence[str], *, source: str = "model"):
    """``model`` itself when its classes are the dataset's, else ``DatasetLabels`` around it."""
    model_classes = list(getattr(model, "class_names", dataset_classes))
    index = dataset_label_index(model_classes, dataset_classes, source=source)
    if index is None:
        return model
    unused = [name for name, label in zip(model_classes, index, strict=True) if label < 0]
    logger.info(
        "%s: the model's %d classes matched by name to the dataset's %d; detections of its %d "
        "other classes (%s) are dropped",
        source, len(model_classes), len(dataset_classes), len(unused), ", ".join(unused[:10]),
    )  # fmt: skip
    return DatasetLabels(model, index, dataset_classes)
