"""FPN mask head (He et al. 2017, fig. 4 right) and the mask loss.

Shape shorthand: R RoIs, D channels, S pooled size, M = 2S mask size, C classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rcnn.models.config import MaskHeadConfig
from rcnn.models.layers import conv_stack, float32_layer


class MaskHead(nn.Module):
    """``num_conv`` x (3x3 conv [+ norm] + ReLU), 2x2 stride-2 deconv + ReLU, 1x1 conv to C.

    Class-specific masks without a background channel. Convs: kaiming-normal (fan_out) init, zero
    bias (torchvision ``MaskRCNNHeads``). The 1x1 predictor starts at normal(std=0.001) as in
    Detectron2's ``MaskRCNNConvUpsampleHead``: deviation from torchvision and gluoncv, whose fan-out
    init of a layer with C outputs gives logits of std ~20 for one class and an initial mask loss
    of 10-25, which slows training from scratch. Loaded weights are unaffected.
    """

    def __init__(self, cfg: MaskHeadConfig, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.convs = conv_stack(in_channels, cfg.conv_dim, cfg.num_conv, norm=cfg.norm)
        channels = cfg.conv_dim if cfg.num_conv else in_channels
        self.deconv = nn.ConvTranspose2d(channels, cfg.conv_dim, 2, stride=2)
        self.predictor = nn.Conv2d(cfg.conv_dim, num_classes, 1)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.predictor.weight, std=0.001)

    def forward(self, x: Tensor) -> Tensor:
        """[R, D, S, S] -> mask logits [R, C, M, M]."""
        return float32_layer(self.predictor, F.relu(self.deconv(self.convs(x))))


def mask_loss(mask_logits: Tensor, gt_classes: Tensor, mask_targets: Tensor) -> Tensor:
    """Per-pixel BCE on the GT class's channel, averaged over all pixels of all positive RoIs.

    Args:
        mask_logits: [R, C, M, M]; gt_classes: int64 [R] in [0, C); mask_targets: [R, M, M] 0/1.
    """
    if len(gt_classes) == 0:
        return mask_logits.sum() * 0
    logits = mask_logits[torch.arange(len(gt_classes), device=gt_classes.device), gt_classes]
    return F.binary_cross_entropy_with_logits(logits, mask_targets)
