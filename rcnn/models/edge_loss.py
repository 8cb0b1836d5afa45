"""The optional Sobel edge loss on masks, and the mask losses of a training step.

Shape shorthand: P positive RoIs, C classes, M mask size.

Seed 003 (notes on matterport's Mask R-CNN, after Zimmermann et al. 2019, "Faster Training of
Mask R-CNN by Focusing on Instance Boundaries"): Sobel filters on the predicted mask probabilities
and on the targets, ``|response|`` clipped to [0, 1], mean squared error between the two edge maps
(both directions). Weighted by ``mask_head.edge_loss_weight`` (0 = off), reported as
``loss_mask_edge``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from rcnn.models.mask_head import mask_loss

# cross-correlation kernels (as tf.nn.conv2d / F.conv2d apply them): d/dx, then d/dy
SOBEL = torch.tensor(
    [
        [[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]],
        [[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]],
    ]
)


def sobel_edges(masks: Tensor) -> Tensor:
    """Edge maps [P, 2, M, M] of masks [P, M, M] in [0, 1]: ``clip(|sobel|, 0, 1)``, zero padding.

    The seed scales masks by 255, clips the response to [0, 255] and divides by 255: the same.
    """
    kernel = SOBEL.to(masks.device, masks.dtype)[:, None]
    return F.conv2d(masks[:, None], kernel, padding=1).abs().clamp(max=1.0)


def mask_edge_loss(mask_logits: Tensor, gt_classes: Tensor, mask_targets: Tensor) -> Tensor:
    """Mean squared difference of the Sobel edges of the GT class's probabilities and the targets.

    Args:
        mask_logits: [P, C, M, M]; gt_classes: int64 [P] in [0, C); mask_targets: [P, M, M] 0/1.
    """
    if len(gt_classes) == 0:
        return mask_logits.sum() * 0
    index = torch.arange(len(gt_classes), device=gt_classes.device)
    probs = mask_logits[index, gt_classes].sigmoid()
    return F.mse_loss(sobel_edges(probs), sobel_edges(mask_targets.to(probs.dtype)))


def mask_losses(
    mask_logits: Tensor, gt_classes: Tensor, mask_targets: Tensor, *, edge_weight: float = 0.0
) -> dict[str, Tensor]:
    """``loss_mask`` (per-pixel BCE) and, when ``edge_weight > 0``, ``loss_mask_edge``."""
    losses = {"loss_mask": mask_loss(mask_logits, gt_classes, mask_targets)}
    if edge_weight > 0:
        losses["loss_mask_edge"] = edge_weight * mask_edge_loss(
            mask_logits, gt_classes, mask_targets
        )
    return losses
