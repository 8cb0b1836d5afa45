"""RPN training targets computed in the data pipeline (in the loader's worker processes).

Shape shorthand: A anchors of one image padded alone (all levels, location-major).

GluonCV computes RPN targets in its CPU data workers (``FasterRCNNDefaultTrainTransform(short,
max_size, net)``, seed 001 "RPN training targets"). ``RPNTargetTransform`` wraps a train transform
and attaches ``Targets.rpn_targets`` made by the model's own target generator on the anchors the
model will use for this image padded alone (to a multiple of ``size_divisibility``). The model
takes them when its anchors are that same set (a batch of one, or of equal padded sizes) and
computes its own otherwise (images of a batch padded to a larger common size have more anchors).

The data layer knows no model: the anchor and target generators, the feature strides and the
size divisibility are parameters. ``RCNN.rpn_target_transform(transform)`` builds this transform
for a model (``rcnn/models/rcnn.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import torch
from torch import Tensor

from rcnn.structures import RPNTargets, Targets

# (feature maps [B, D, H_l, W_l] per level, padded (H, W)) -> per level [A_l, 4] anchors
AnchorFn = Callable[[list[Tensor], tuple[int, int]], list[Tensor]]
# (anchors [A, 4], gt boxes [G, 4], gt ignore [G], (H, W), *, generator) -> RPNTargets
TargetFn = Callable[..., RPNTargets]


class RPNTargetTransform:
    """``(image, Targets) -> (image, Targets with rpn_targets)`` after an optional inner transform.

    Args:
        anchor_generator: the model's anchors of a padded size (an ``AnchorGenerator``).
        target_generator: labels, samples and encodes anchors (an ``RPNTargetGenerator``).
        strides: stride of each feature map the RPN sees (FPN: P2-P6 ``(4, 8, 16, 32, 64)``).
        size_divisibility: the model pads images to a multiple of this.
        transform: the train transform to run first (``TrainTransform``), or None.
    """

    def __init__(
        self,
        anchor_generator: AnchorFn,
        target_generator: TargetFn,
        *,
        strides: tuple[int, ...],
        size_divisibility: int,
        transform: Callable | None = None,
    ) -> None:
        self.anchor_generator = anchor_generator
        self.target_generator = target_generator
        self.strides = tuple(int(s) for s in strides)
        self.size_divisibility = int(size_divisibility)
        self.transform = transform

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
        return image, replace(targets, rpn_targets=self.targets_for(targets, generator))
