"""The assembled detector: preprocessing, backbone, RPN, RoI heads and postprocessing.

Shape shorthand: B images, H/W image size, Hp/Wp padded batch size, N detections, C classes.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rcnn.data.rpn_targets import RPNTargetTransform
from rcnn.models.anchors import AnchorGenerator
from rcnn.models.config import ModelConfig
from rcnn.models.reset_class import reset_class
from rcnn.models.rpn_targets import RPNTargetGenerator
from rcnn.ops.boxes import clip_boxes
from rcnn.ops.masks import paste_masks, paste_masks_aligned
from rcnn.structures import Detections, HeadDetections, ImageBatch, Targets


def pad_batch(images: list[Tensor], divisibility: int) -> ImageBatch:
    """Zero-pad [3, H_i, W_i] images into [B, 3, Hp, Wp], Hp/Wp multiples of ``divisibility``."""
    height = max(int(img.shape[-2]) for img in images)
    width = max(int(img.shape[-1]) for img in images)
    height = int(math.ceil(height / divisibility) * divisibility)
    width = int(math.ceil(width / divisibility) * divisibility)
    batch = images[0].new_zeros((len(images), images[0].shape[0], height, width))
    for i, img in enumerate(images):
        batch[i, :, : img.shape[-2], : img.shape[-1]].copy_(img)
    return ImageBatch(batch, [(int(img.shape[-2]), int(img.shape[-1])) for img in images])


def test_resize(image: Tensor, short: int, max_size: int) -> Tensor:
    """Bilinear resize of a float [3, H, W] to short side ``short``, long side <= ``max_size``.

    The exact call of torchvision's ``GeneralizedRCNNTransform.resize`` (scale factor, recomputed
    output size, ``align_corners=False``), so detections match torchvision's models pixel for pixel.
    """
    height, width = image.shape[-2:]
    scale = min(short / min(height, width), max_size / max(height, width))
    return F.interpolate(
        image[None],
        scale_factor=scale,
        mode="bilinear",
        recompute_scale_factor=True,
        align_corners=False,
    )[0]


class RCNN(nn.Module):
    """Two-stage detector; ``forward`` dispatches to ``loss`` (with targets) or ``predict``.

    Attributes:
        cfg: the ``ModelConfig`` it was built from.
        class_names: C names; ``num_classes``; ``has_mask``.
    """

    has_mask = False

    def __init__(self, cfg: ModelConfig, backbone: nn.Module, rpn: nn.Module, roi_heads: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.class_names = list(cfg.classes)
        self.num_classes = len(self.class_names)
        if cfg.category_ids and len(cfg.category_ids) != self.num_classes:
            raise ValueError(f"{len(cfg.category_ids)} category ids for {self.num_classes} classes")
        # label -> the source dataset's category id (COCO results files), or None: label + 1
        self.label_to_category_id = list(cfg.category_ids) or None
        self.backbone, self.rpn, self.roi_heads = backbone, rpn, roi_heads
        inp = cfg.input
        self.register_buffer("pixel_mean", torch.tensor(inp.pixel_mean).view(3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(inp.pixel_std).view(3, 1, 1), False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def reset_class(self, classes, reuse_weights=None) -> RCNN:
        """New class predictors for ``classes``, keeping the rows of ``reuse_weights`` (a dict
        new -> old by name or index, or a list of names) and the background row: GluonCV's
        ``reset_class`` (``rcnn/models/reset_class.py``)."""
        return reset_class(self, classes, reuse_weights)

    def rpn_target_transform(self, transform: Callable | None = None) -> RPNTargetTransform:
        """The data-pipeline transform that attaches this model's RPN targets to each sample
        (after ``transform``), as GluonCV's ``FasterRCNNDefaultTrainTransform(..., net)`` does."""
        return RPNTargetTransform(
            AnchorGenerator(self.cfg.anchors, self.backbone.strides),
            RPNTargetGenerator(self.cfg.rpn),
            strides=self.backbone.strides,
            size_divisibility=self.cfg.input.size_divisibility,
            transform=transform,
        )

    def forward(self, images: list[Tensor], targets: list[Targets] | None = None, **kwargs):
        if targets is not None:
            return self.loss(images, targets, **kwargs)
        if self.training:
            raise ValueError("in train mode the model needs targets; call model.eval() to predict")
        return self.predict(images)

    def normalize(self, image: Tensor) -> Tensor:
        """uint8 [3, H, W] (any device) -> normalised float32 on the model's device."""
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"expected an image tensor [3, H, W], got shape {tuple(image.shape)}")
        image = image.to(self.device, non_blocking=True).float() / 255.0
        if self.cfg.input.pixel_range != 1.0:
            image = image * self.cfg.input.pixel_range
        if self.cfg.input.bgr:
            image = image.flip(0)
        return (image - self.pixel_mean) / self.pixel_std

    def features(self, batch: ImageBatch) -> list[Tensor]:
        """Backbone features, one [B, D, H_l, W_l] per level."""
        return list(self.backbone(batch.tensor).values())

    def loss(self, images: list[Tensor], targets: list[Targets], *, return_intermediates=False):
        """Losses ``loss_*`` and diagnostics of one batch (images already resized): a flat
        ``dict[str, Tensor]``; with ``return_intermediates=True`` the pair ``(losses,
        intermediates)``, the tutorial's intermediates (``RPN.forward``, ``box_intermediates``,
        the mask targets and logits, ``proposals``) in a dict of their own."""
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        batch = pad_batch([self.normalize(img) for img in images], self.cfg.input.size_divisibility)
        targets = [t.to(self.device) for t in targets]
        feats = self.features(batch)
        padded = tuple(batch.tensor.shape[-2:])
        proposals, losses, inter = self.rpn(feats, padded, batch.image_sizes, targets)
        roi_losses, roi_inter = self.roi_heads.forward_train(feats, proposals, targets)
        losses.update(roi_losses)
        if not return_intermediates:
            return losses
        inter.update(roi_inter)
        inter["proposals"] = proposals
        return losses, inter

    @torch.no_grad()
    def predict(self, images: list[Tensor]) -> list[Detections]:
        """Detections in the coordinates of the raw ``images`` (uint8 [3, H, W], any size)."""
        inp = self.cfg.input
        resized = [test_resize(self.normalize(img), inp.test_short, inp.max_size) for img in images]
        batch = pad_batch(resized, inp.size_divisibility)
        feats = self.features(batch)
        proposals, _, _ = self.rpn(feats, tuple(batch.tensor.shape[-2:]), batch.image_sizes)
        results = self.roi_heads.forward_test(feats, proposals, batch.image_sizes)
        return [
            self.to_raw(result, size, tuple(img.shape[-2:]))
            for result, size, img in zip(results, batch.image_sizes, images, strict=True)
        ]

    def to_raw(
        self, result: HeadDetections, size: tuple[int, int], raw_size: tuple[int, int]
    ) -> Detections:
        """Rescale boxes per axis to the raw image (and paste masks at its full resolution)."""
        ratio_h = torch.tensor(raw_size[0], dtype=torch.float32) / torch.tensor(
            size[0], dtype=torch.float32
        )
        ratio_w = torch.tensor(raw_size[1], dtype=torch.float32) / torch.tensor(
            size[1], dtype=torch.float32
        )
        scale = torch.stack([ratio_w, ratio_h, ratio_w, ratio_h]).to(result.boxes.device)
        boxes = result.boxes * scale
        masks = None
        if result.mask_probs is not None:
            paste = paste_masks_aligned if self.cfg.mask_head.paste == "aligned" else paste_masks
            masks = paste(result.mask_probs, boxes, (int(raw_size[0]), int(raw_size[1])))
        if not self.cfg.box_head.clip_boxes:
            # deviation from gluoncv: its R-CNN returns boxes as decoded; NMS, mask pooling and
            # pasting above used them so too, only the returned boxes are clipped to the image
            boxes = clip_boxes(boxes, (int(raw_size[0]), int(raw_size[1])))
        return Detections(boxes, result.scores, result.labels, masks)


class FasterRCNN(RCNN):
    """Faster R-CNN (Ren et al. 2015): box detections only."""


class MaskRCNN(RCNN):
    """Mask R-CNN (He et al. 2017): box detections and instance masks."""

    has_mask = True
