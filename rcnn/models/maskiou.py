"""Mask Scoring R-CNN (Huang et al., CVPR 2019; seed 003): a MaskIoU head that predicts each mask's
IoU with its ground truth, so that a mask is ranked by ``class score x predicted IoU``.

Shape shorthand: P RoIs, D channels of the mask head's input, S its size, M = 2S the mask size,
C classes.

Head (the paper's Fig. 3): the mask head's input features ``[P, D, S, S]`` concatenated with the
predicted mask of the RoI's class, max-pooled 2x2 to ``S x S``; four 3x3 convs (the last with
stride 2), two fully connected layers and one output per class. # deviation from the paper: the
first three convs are followed by GroupNorm: without it, trained from scratch (unnormalised
features of any scale), the head's own loss jumped from 0.04 to 24 by iteration 5 and to NaN by
iteration 8 on balloon (narrow preset, 320 px, colour + scale jitter), even with its features
detached.

Training: on the positive RoIs, the target is the IoU between the binarised predicted mask
(probability > 0.5) and the mask target, both on the RoI's ``M x M`` grid, with no gradient into the
mask head and none into the features it reads (# deviation from the paper's code, whose loss
reaches the shared features: trained from scratch, its early errors (loss ~7 at iteration 1) sent
the detector's losses to 4e4 and ``loss_maskiou`` to inf by iteration 8 on the shapes demo and on
balloon); the loss is the squared error of the GT class's output (``loss_maskiou``, weighted by
``mask_head.maskiou_weight``). # deviation from the paper: the IoU is taken on the RoI grid, not
against the instance's whole area (its ``mask_ratios``), so a ground truth reaching outside the
RoI counts only the part inside.

Inference: ``rescore`` returns ``class score x predicted IoU`` of the detected class, which becomes
the detection's score (one score per detection in ``Detections``: boxes and masks are ranked by it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rcnn.models.config import MaskHeadConfig
from rcnn.models.layers import conv_stack, float32_layer


class MaskIoUHead(nn.Module):
    """Predicted mask IoU per class: ``forward(features [P,D,S,S], mask_probs [P,M,M]) -> [P,C]``.

    Args:
        in_channels: D; conv_dim: the convs' width; fc_dim: the fully connected layers' width;
        resolution: S; num_classes: C.
    """

    def __init__(
        self, in_channels: int, *, conv_dim: int, fc_dim: int, resolution: int, num_classes: int
    ) -> None:
        super().__init__()
        self.convs = conv_stack(in_channels + 1, conv_dim, 3, norm="gn")
        self.down = nn.Conv2d(conv_dim, conv_dim, 3, stride=2, padding=1)
        side = (resolution + 1) // 2
        self.fc1 = nn.Linear(conv_dim * side * side, fc_dim)
        self.fc2 = nn.Linear(fc_dim, fc_dim)
        self.predictor = nn.Linear(fc_dim, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.kaiming_uniform_(module.weight, a=1)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.predictor.weight, std=0.01)

    def forward(self, features: Tensor, mask_probs: Tensor) -> Tensor:
        pooled = F.max_pool2d(mask_probs[:, None], kernel_size=2, stride=2)
        x = self.convs(torch.cat([features, pooled.to(features.dtype)], dim=1))
        x = F.relu(self.down(x)).flatten(1)
        return float32_layer(self.predictor, F.relu(self.fc2(F.relu(self.fc1(x)))))


def build_maskiou_head(
    mask_cfg: MaskHeadConfig | None, in_channels: int, num_classes: int, *, resolution: int
) -> MaskIoUHead | None:
    """The MaskIoU head a mask config asks for (``mask_cfg.maskiou``), else None. Its input is
    the mask head's, ``[P, in_channels, resolution, resolution]`` (FPN: the RoIAlign output; C4:
    res5's)."""
    if mask_cfg is None or not mask_cfg.maskiou:
        return None
    return MaskIoUHead(
        in_channels,
        conv_dim=mask_cfg.conv_dim,
        fc_dim=mask_cfg.maskiou_fc_dim,
        resolution=resolution,
        num_classes=num_classes,
    )


def class_channel(mask_logits: Tensor, classes: Tensor) -> Tensor:
    """The ``[P, ...]`` channel of each RoI's class from ``[P, C, ...]`` (mask logits
    ``[P, C, M, M]``, predicted IoUs ``[P, C]``); a gather, so that it traces (ONNX export)."""
    trailing = mask_logits.shape[2:]
    index = classes.view(-1, 1, *(1 for _ in trailing)).expand(-1, 1, *trailing)
    return mask_logits.gather(1, index)[:, 0]


def maskiou_targets(mask_logits: Tensor, classes: Tensor, mask_targets: Tensor) -> Tensor:
    """IoU ``[P]`` of each binarised predicted mask (probability > 0.5) with its target.

    Args:
        mask_logits: [P, C, M, M]; classes: int64 [P] in [0, C); mask_targets: [P, M, M] 0/1.
    """
    predicted = class_channel(mask_logits.detach(), classes) > 0
    truth = mask_targets > 0.5
    inter = (predicted & truth).flatten(1).sum(1).float()
    union = (predicted | truth).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))


def maskiou_loss(
    head: MaskIoUHead,
    features: Tensor,
    mask_logits: Tensor,
    *,
    classes: Tensor,
    mask_targets: Tensor,
    weight: float = 1.0,
) -> dict[str, Tensor]:
    """``{"loss_maskiou": weight * mean squared error}`` over the positive RoIs."""
    if len(classes) == 0:
        zero = sum(p.sum() for p in head.parameters()) * 0.0
        return {"loss_maskiou": zero + mask_logits.sum() * 0.0}
    probs = class_channel(mask_logits, classes).detach().sigmoid()
    predicted = class_channel(head(features.detach(), probs), classes)
    target = maskiou_targets(mask_logits, classes, mask_targets)
    return {"loss_maskiou": weight * F.mse_loss(predicted, target)}


def rescore(
    head: MaskIoUHead, features: Tensor, mask_probs: Tensor, labels: Tensor, scores: Tensor
):
    """``scores x predicted IoU`` (clamped to [0, 1]) of the detections' classes; ``[P]``.

    Args:
        features: [P, D, S, S]; mask_probs: [P, M, M] of the detected class; labels, scores: [P].
    """
    if len(labels) == 0:
        return scores
    iou = class_channel(head(features, mask_probs), labels).clamp(0.0, 1.0)
    return scores * iou
