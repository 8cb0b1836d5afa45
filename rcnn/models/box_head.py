"""Box heads on pooled RoI features and the class-specific box predictor; the box losses.

Shape shorthand: R RoIs, D channels, S pooled size, C classes (no background), F fc width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rcnn.models.config import BoxHeadConfig
from rcnn.models.layers import conv_stack, float32_layer


class TwoFCHead(nn.Module):
    """Flatten + fc(F) + ReLU + fc(F) + ReLU (torchvision ``TwoMLPHead``, GluonCV ``2xFC1024``)."""

    def __init__(self, in_channels: int, resolution: int, fc_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_channels * resolution * resolution, fc_dim)
        self.fc2 = nn.Linear(fc_dim, fc_dim)
        self.out_dim = fc_dim

    def forward(self, x: Tensor) -> Tensor:
        """[R, D, S, S] -> [R, F]."""
        return F.relu(self.fc2(F.relu(self.fc1(x.flatten(1)))))


class ConvFCHead(nn.Module):
    """``num_conv`` x (3x3 conv [+ norm] + ReLU), flatten, fc(F) + ReLU (torchvision
    ``FastRCNNConvFCHead``; Wu et al., "Group Normalization", 4conv1fc)."""

    def __init__(self, in_channels: int, resolution: int, cfg: BoxHeadConfig) -> None:
        super().__init__()
        self.convs = conv_stack(in_channels, cfg.conv_dim, cfg.num_conv, norm=cfg.norm)
        channels = cfg.conv_dim if cfg.num_conv else in_channels
        self.fc1 = nn.Linear(channels * resolution * resolution, cfg.fc_dim)
        self.out_dim = cfg.fc_dim
        for module in self.convs.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        """[R, D, S, S] -> [R, F]."""
        return F.relu(self.fc1(self.convs(x).flatten(1)))


class BoxPredictor(nn.Module):
    """Classifier with background at column 0 (class c at c + 1) and class-specific deltas [R, 4C].

    Init N(0, 0.01) / N(0, 0.001), zero bias (GluonCV ``RCNN``, Detectron2
    ``FastRCNNOutputLayers``).
    """

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_dim, num_classes + 1)
        self.bbox_pred = nn.Linear(in_dim, num_classes * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """[R, F] -> (class logits [R, C+1], deltas [R, 4C])."""
        return float32_layer(self.cls_score, x), float32_layer(self.bbox_pred, x)


def build_box_head(cfg: BoxHeadConfig, in_channels: int) -> nn.Module:
    """The FPN box head named by ``cfg.kind`` (``"2fc"`` or ``"4conv1fc"``)."""
    resolution = cfg.pooler_resolution // cfg.pool_downsample
    if cfg.kind == "2fc":
        return TwoFCHead(in_channels, resolution, cfg.fc_dim)
    if cfg.kind == "4conv1fc":
        return ConvFCHead(in_channels, resolution, cfg)
    raise ValueError(
        f"unknown box_head.kind {cfg.kind!r} for an FPN model; expected 2fc or 4conv1fc"
    )


def box_losses(
    cls_logits: Tensor,
    box_deltas: Tensor,
    gt_classes: Tensor,
    *,
    box_targets: Tensor,
    beta: float,
) -> dict[str, Tensor]:
    """Softmax CE over sampled RoIs + smooth-L1 of the GT class's deltas on positives, / #RoIs.

    Args:
        cls_logits: [R, C+1]; box_deltas: [R, 4C]; gt_classes: int64 [R] in [0, C] (0 background);
        box_targets: [R, 4] (valid where gt_classes > 0).
    """
    num_rois = max(len(gt_classes), 1)
    zero = cls_logits.sum() * 0 + box_deltas.sum() * 0
    loss_cls = F.cross_entropy(cls_logits, gt_classes, reduction="sum") / num_rois
    pos = torch.where(gt_classes > 0)[0]
    # [R, C, 4] (R may be 0)
    deltas = box_deltas.view(len(box_deltas), box_deltas.shape[1] // 4, 4)[pos, gt_classes[pos] - 1]
    loss_box = F.smooth_l1_loss(deltas, box_targets[pos], beta=beta, reduction="sum") / num_rois
    with torch.no_grad():
        accuracy = (cls_logits.argmax(1) == gt_classes).float().sum() / num_rois
    return {
        "loss_rcnn_cls": loss_cls + zero,
        "loss_rcnn_box": loss_box + zero,
        "rcnn_num_pos": torch.tensor(float(len(pos)), device=cls_logits.device),
        "rcnn_accuracy": accuracy,
    }
