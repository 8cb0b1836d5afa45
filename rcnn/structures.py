"""The small typed structures that pass between stages (the stage contracts of DESIGN.md).

Shape shorthand: N instances, R RoIs, B images, H/W image height/width.

Conventions shared by every stage:
- Boxes are float32 XYXY in absolute pixels of the image they belong to, continuous coordinates
  (a box covering pixel columns 0..9 is ``x1=0, x2=10``).
- Labels are int64 in ``[0, num_classes)``; there is no background label outside the classifier.
- Instance masks stay polygons or RLE (``InstanceMask``) until mask targets are cropped per RoI.

dataset -> transform: ``Record``; transform -> loader -> model: ``(uint8 image [3,H,W], Targets)``
(optionally with ``RPNTargets`` attached in the data pipeline); RPN -> RoI heads: ``Proposals``;
inside the RoI heads (docs/CONTRACTS.md): ``sample_rois`` -> ``SampledRoIs`` -> box branch ->
``BoxPredictions`` -> ``HeadDetections`` (eval) and mask branch -> ``MaskPredictions``;
model (eval) -> user/evaluator: ``Detections``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

# One instance's mask: either a list of polygons, each a flat float64 array
# ``[x0, y0, x1, y1, ...]`` of at least 3 points (COCO's "segmentation" list form), or a COCO RLE
# dict ``{"size": [H, W], "counts": bytes}`` (compressed; uncompressed counts are converted).
Polygons = list[np.ndarray]
RLE = dict[str, Any]
InstanceMask = Polygons | RLE


def is_rle(mask: InstanceMask) -> bool:
    """True when ``mask`` is an RLE dict, False when it is a list of polygons."""
    return isinstance(mask, dict)


@dataclass
class Record:
    """One annotated image as a dataset reads it from disk (before any transform).

    Attributes:
        image_path: absolute path of the image file.
        image_id: the image's id in the source file (COCO ``image.id``; VOC: index in the list).
        height: image height in pixels, as the annotation file states (checked against the file).
        width: image width in pixels.
        boxes: float32 ``[N, 4]`` XYXY in original image pixels.
        labels: int64 ``[N]`` contiguous labels in ``[0, num_classes)``.
        ignore: bool ``[N]``: crowd (COCO) or difficult (VOC) regions; neither positives nor
            negatives in training, ignored (not false positives) in evaluation.
        masks: one ``InstanceMask`` per instance, or None for box-only data.
        annotation_ids: the source file's annotation id per instance (-1 where there is none).
        file_name: the image's file name as the annotation file states it (for messages).
    """

    image_path: str
    image_id: int
    height: int
    width: int
    boxes: np.ndarray
    labels: np.ndarray
    ignore: np.ndarray
    masks: list[InstanceMask] | None = None
    annotation_ids: list[int] = field(default_factory=list)
    file_name: str = ""

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


@dataclass
class RPNTargets:
    """RPN training targets of the N anchors of one image (``RPNTargetGenerator``).

    Attributes:
        labels: int64 [N]: 1 positive, 0 negative, -1 not sampled / ignored.
        box_targets: float32 [N, 4] encoded offsets (zero where ``labels != 1``).
        box_weights: float32 [N, 4]: 1 on positives, 0 elsewhere (GluonCV's ``rpn_box_masks``).
    """

    labels: Tensor
    box_targets: Tensor
    box_weights: Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class Targets:
    """The ground truth of one image in the coordinates of the image tensor it travels with.

    Attributes:
        boxes: float32 ``[N, 4]`` XYXY in the current (resized, flipped) image's pixels.
        labels: int64 ``[N]`` in ``[0, num_classes)``.
        ignore: bool ``[N]`` crowd / difficult flags.
        masks: one ``InstanceMask`` per instance in current image coordinates, or None.
        image_id: the source file's image id.
        image_size: ``(H, W)`` of the current image tensor.
        orig_size: ``(H, W)`` of the image on disk.
        scale: current size / original size (the resize factor, same on both axes).
        flipped: whether a horizontal flip was applied.
        rpn_targets: optional ``RPNTargets`` attached in the data pipeline
            (``rcnn.data.rpn_targets``) for the A anchors of this image padded alone; the model
            uses them when its anchors are the same set, and computes its own otherwise.
    """

    boxes: Tensor
    labels: Tensor
    ignore: Tensor
    image_id: int
    image_size: tuple[int, int]
    orig_size: tuple[int, int]
    masks: list[InstanceMask] | None = None
    scale: float = 1.0
    flipped: bool = False
    rpn_targets: RPNTargets | None = None

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def to(self, device: torch.device | str) -> Targets:
        """A copy with the tensors on ``device`` (masks stay host-side polygons/RLE)."""
        return replace(
            self,
            boxes=self.boxes.to(device),
            labels=self.labels.to(device),
            ignore=self.ignore.to(device),
        )


@dataclass
class ImageBatch:
    """Normalised images padded to one size.

    Attributes:
        tensor: float32 ``[B, 3, Hp, Wp]``, ``Hp`` and ``Wp`` multiples of the size divisibility.
        image_sizes: ``(H, W)`` of each image before padding.
    """

    tensor: Tensor
    image_sizes: list[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.image_sizes)


@dataclass
class Proposals:
    """Region proposals of one image (detached from the graph).

    Attributes:
        boxes: float32 ``[R, 4]`` XYXY in the padded-batch image's pixels.
        objectness: float32 ``[R]`` RPN logits.
    """

    boxes: Tensor
    objectness: Tensor

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


@dataclass
class Detections:
    """The detections of one image, in the coordinates of the image the user passed in.

    Attributes:
        boxes: float32 ``[N, 4]`` XYXY.
        scores: float32 ``[N]`` class probabilities, sorted descending.
        labels: int64 ``[N]`` in ``[0, num_classes)``.
        masks: bool ``[N, H, W]`` at the full image resolution (Mask R-CNN), or None.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    masks: Tensor | None = None

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def to(self, device: torch.device | str) -> Detections:
        masks = None if self.masks is None else self.masks.to(device)
        return Detections(
            self.boxes.to(device), self.scores.to(device), self.labels.to(device), masks
        )


@dataclass
class SampledRoIs:
    """The RoIs of a training batch sampled for the box and mask heads (``sample_rois``).

    Per-image lists (R_i RoIs of image i); every concatenation over images is in ``torch.cat``
    order, which is the order of the heads' outputs.

    Attributes:
        rois: float32 [R_i, 4] XYXY in padded-batch image pixels (proposals and usable GT boxes).
        gt_classes: int64 [R_i] in [0, C]: 0 background, c + 1 for class c (the classifier's
            column).
        matched: int64 [R_i] index of the matched ground truth in the image's ``Targets``
            (meaningful where ``gt_classes > 0``).
        box_targets: float32 [R_i, 4] encoded offsets to the matched box (zero on negatives).
    """

    rois: list[Tensor]
    gt_classes: list[Tensor]
    matched: list[Tensor]
    box_targets: list[Tensor]

    def __len__(self) -> int:
        return sum(int(r.shape[0]) for r in self.rois)

    def positives(self) -> list[Tensor]:
        """Per image, int64 [P_i] indices of the positive RoIs (``gt_classes > 0``)."""
        return [torch.where(classes > 0)[0] for classes in self.gt_classes]

    def positive_rois(self) -> list[Tensor]:
        """Per image, the [P_i, 4] positive RoIs (the mask head's training RoIs)."""
        return [rois[pos] for rois, pos in zip(self.rois, self.positives(), strict=True)]


@dataclass
class BoxPredictions:
    """The box branch's outputs for R RoIs (all images, ``torch.cat`` order).

    Attributes:
        cls_logits: [R, C+1] class logits, background at column 0.
        box_deltas: [R, 4C] class-specific encoded offsets (no background slot).
    """

    cls_logits: Tensor
    box_deltas: Tensor

    def __len__(self) -> int:
        return int(self.cls_logits.shape[0])


@dataclass
class MaskPredictions:
    """The mask branch's outputs for P RoIs (positive RoIs in training, detections in inference).

    Attributes:
        logits: [P, C, M, M] class-specific mask logits (no background channel).
        classes: int64 [P] in [0, C): the class whose channel counts (ground truth in training,
            the predicted label in inference).
    """

    logits: Tensor
    classes: Tensor

    def __len__(self) -> int:
        return int(self.logits.shape[0])

    def class_logits(self) -> Tensor:
        """[P, M, M] logits of each RoI's own class."""
        index = self.classes.view(-1, 1, 1, 1).expand(-1, 1, *self.logits.shape[2:])
        return self.logits.gather(1, index)[:, 0]  # a gather, so that it traces (ONNX export)


@dataclass
class HeadDetections:
    """The RoI heads' detections of one image, in the resized image the network saw.

    ``RCNN.predict`` rescales them to the user's image and pastes the masks (``Detections``).

    Attributes:
        boxes: float32 [N, 4] XYXY in resized-image pixels (clipped to the unpadded image).
        scores: float32 [N] class probabilities, sorted descending.
        labels: int64 [N] in [0, C).
        mask_probs: float32 [N, M, M] mask probabilities in each box (Mask R-CNN), or None.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    mask_probs: Tensor | None = None

    def __len__(self) -> int:
        return int(self.boxes.shape[0])
