"""RPN training targets computed in the data pipeline (in the loader's worker processes).

Shape shorthand: A anchors of one image padded alone (all levels, location-major).

GluonCV computes RPN targets in its CPU data workers (``FasterRCNNDefaultTrainTransform(short,
max_size, net)``, seed 001 "RPN training targets"). ``RPNTargetTransform`` wraps a train transform
and attaches ``Targets.rpn_targets`` made by the model's own ``RPNTargetGenerator`` on the anchors
the model will use for this image padded alone (to a multiple of ``size_divisibility``). The model
takes them when its anchors are that same set (a batch of one, or of equal padded sizes) and
computes its own otherwise (images of a batch padded to a larger common size have more anchors).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import torch
from torch import Tensor

from rcnn.models.anchors import AnchorGenerator
from rcnn.models.config import ModelConfig
from rcnn.models.rpn_targets import RPNTargetGenerator, RPNTargets
from rcnn.structures import Targets

FPN_STRIDES = (4, 8, 16, 32, 64)  # P2-P6
C4_STRIDES = (16,)


def feature_strides(cfg: ModelConfig) -> tuple[int, ...]:
    """Strides of the feature maps the RPN sees for ``cfg.arch``."""
    if cfg.arch == "c4":
        return C4_STRIDES
    return FPN_STRIDES


class RPNTargetTransform:
    """``(image, Targets) -> (image, Targets with rpn_targets)`` after an optional inner transform.

    Args:
        cfg: the model's config (anchors, RPN, input size divisibility, arch).
        transform: the train transform to run first (``TrainTransform``), or None.
    """

    def __init__(self, cfg: ModelConfig, transform: Callable | None = None) -> None:
        self.transform = transform
        self.strides = feature_strides(cfg)
        self.size_divisibility = cfg.input.size_divisibility
        self.anchor_generator = AnchorGenerator(cfg.anchors, self.strides)
        self.target_generator = RPNTargetGenerator(cfg.rpn)

    def anchors(self, image_size: tuple[int, int]) -> Tensor:
        """[A, 4] anchors of an (H, W) image padded alone, as the model's ``AnchorGenerator`` makes.

        A ResNet feature map of a padded side ``P`` (a multiple of 32) has ``ceil(P / stride)``
        cells (P6 halves P5 with ``ceil``).
        """
        div = self.size_divisibility
        padded = tuple(int(math.ceil(side / div) * div) for side in image_size)
        maps = [
            torch.empty((0, 0, math.ceil(padded[0] / s), math.ceil(padded[1] / s)))
            for s in self.strides
        ]
        return torch.cat(self.anchor_generator(maps, padded))

    def targets_for(self, targets: Targets, generator: torch.Generator | None = None) -> RPNTargets:
        """RPN targets of the image ``targets`` belong to (``targets.image_size``)."""
        size = (int(targets.image_size[0]), int(targets.image_size[1]))
        return self.target_generator(
            self.anchors(size), targets.boxes, targets.ignore, size, generator=generator
        )

    def __call__(
        self, image: Tensor, targets: Targets, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Targets]:
        if self.transform is not None:
            image, targets = self.transform(image, targets, generator=generator)
        rpn_targets = self.targets_for(targets, generator)
        return image, replace(targets, rpn_targets=rpn_targets.as_dict())
