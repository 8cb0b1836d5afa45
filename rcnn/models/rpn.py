"""Region proposal network: head, proposal generation, anchor targets and losses.

Shape shorthand: B images, A anchors per location, N anchors of an image (all levels),
L levels, K proposals kept per image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms

from rcnn.models.anchors import AnchorGenerator
from rcnn.models.config import RPNConfig
from rcnn.models.layers import conv_norm, float32_layer
from rcnn.models.rpn_targets import RPNTargetGenerator
from rcnn.ops.boxes import BoxCoder, clip_boxes, remove_small
from rcnn.structures import Proposals, Targets


class RPNHead(nn.Module):
    """``conv_depth`` 3x3 convs (+ReLU) shared by all levels, 1x1 objectness (A) and deltas (4A).

    Weights ~ N(0, 0.01), biases 0 (torchvision ``RPNHead``, GluonCV ``RPNHead``).
    """

    def __init__(
        self, in_channels: int, num_anchors: int, *, channels: int = 0, conv_depth: int = 1, norm=""
    ):
        super().__init__()
        channels = channels or in_channels
        convs = [
            conv_norm(in_channels if i == 0 else channels, channels, 3, norm=norm, relu=True)
            for i in range(conv_depth)
        ]
        self.conv = nn.Sequential(*convs)
        self.objectness = nn.Conv2d(channels, num_anchors, 1)
        self.deltas = nn.Conv2d(channels, 4 * num_anchors, 1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per level: logits [B, H_l*W_l*A] and deltas [B, H_l*W_l*A, 4] (location-major)."""
        logits, deltas = [], []
        for feature in features:
            hidden = self.conv(feature)
            score = float32_layer(self.objectness, hidden)
            delta = float32_layer(self.deltas, hidden)
            batch, num_anchors, height, width = score.shape
            logits.append(score.permute(0, 2, 3, 1).reshape(batch, -1))
            delta = delta.view(batch, num_anchors, 4, height, width).permute(0, 3, 4, 1, 2)
            deltas.append(delta.reshape(batch, -1, 4))
        return logits, deltas


def _top_candidates(logits: list[Tensor], cfg: RPNConfig, topk: int):
    """Indices [B, K'] of the top-scoring anchors and level ids [K'] (per level or jointly)."""
    if not cfg.per_level:
        flat = torch.cat(logits, 1)
        idx = flat.topk(min(topk, flat.shape[1]), dim=1).indices
        return idx, torch.zeros(idx.shape[1], dtype=torch.int64, device=flat.device)
    out, level_ids, offset = [], [], 0
    for level, level_logits in enumerate(logits):
        k = min(topk, level_logits.shape[1])
        out.append(level_logits.topk(k, dim=1).indices + offset)
        level_ids.append(torch.full((k,), level, dtype=torch.int64, device=level_logits.device))
        offset += level_logits.shape[1]
    return torch.cat(out, 1), torch.cat(level_ids)


def generate_proposals(
    anchors: list[Tensor],
    logits: list[Tensor],
    deltas: list[Tensor],
    image_sizes: list[tuple[int, int]],
    *,
    cfg: RPNConfig,
    training: bool,
) -> list[Proposals]:
    """Decode, clip, drop small / low-score boxes, NMS and keep the top ``post_nms_topk``.

    Args:
        anchors: per level [N_l, 4]; logits: per level [B, N_l]; deltas: per level [B, N_l, 4].
    """
    mode = 0 if training else 1
    coder = BoxCoder(cfg.box_weights, cfg.box_clip)
    logits = [x.detach() for x in logits]
    idx, level_ids = _top_candidates(logits, cfg, cfg.pre_nms_topk[mode])
    batch = torch.arange(len(image_sizes), device=idx.device)[:, None]
    top_logits = torch.cat(logits, 1)[batch, idx]
    top_deltas = torch.cat([d.detach() for d in deltas], 1)[batch, idx]
    top_anchors = torch.cat(anchors, 0)[idx]
    boxes = coder.decode(top_deltas.reshape(-1, 4), top_anchors.reshape(-1, 4)).view(
        (*idx.shape, 4)
    )
    out = []
    for i, size in enumerate(image_sizes):
        img_boxes, img_logits = clip_boxes(boxes[i], size), top_logits[i]
        keep = remove_small(img_boxes, cfg.min_size)
        scores = torch.sigmoid(img_logits)  # NMS ranks probabilities, as torchvision does
        keep = keep[scores[keep] >= cfg.score_thresh]
        nms_keep = batched_nms(img_boxes[keep], scores[keep], level_ids[keep], cfg.nms_thresh)
        keep = keep[nms_keep[: cfg.post_nms_topk[mode]]]
        out.append(Proposals(img_boxes[keep], img_logits[keep]))
    return out


def anchor_targets(
    anchors: Tensor, targets: list[Targets], cfg: RPNConfig
) -> tuple[Tensor, Tensor]:
    """Sampled anchor labels and regression targets (Ren et al. 2015, sec. 3.1.2).

    One ``RPNTargetGenerator`` call per image (the component the data pipeline can also run);
    targets the pipeline already attached for this anchor set are used as they are.

    Args:
        anchors: [N, 4] all levels concatenated.

    Returns:
        labels int64 [B, N]: 1 positive, 0 negative, -1 not sampled / ignored;
        box_targets float [B, N, 4] (valid where labels == 1, zero elsewhere).
    """
    generator = RPNTargetGenerator(cfg)
    all_labels, all_targets = [], []
    for target in targets:
        attached = target.rpn_targets
        if attached is not None and len(attached) == len(anchors):
            labels = attached.labels.to(anchors.device)
            box_targets = attached.box_targets.to(anchors.device, anchors.dtype)
        else:
            out = generator(anchors, target.boxes, target.ignore, target.image_size)
            labels, box_targets = out.labels, out.box_targets
        all_labels.append(labels)
        all_targets.append(box_targets)
    return torch.stack(all_labels), torch.stack(all_targets)


def rpn_losses(
    logits: Tensor, deltas: Tensor, labels: Tensor, *, box_targets: Tensor, beta: float
) -> dict[str, Tensor]:
    """Objectness BCE over sampled anchors and smooth-L1 over positives, both / #sampled.

    Args:
        logits: [B, N]; deltas: [B, N, 4]; labels: [B, N] (1/0/-1); box_targets: [B, N, 4].
    """
    sampled = labels >= 0
    pos = labels == 1
    num_sampled = sampled.sum().clamp(min=1)
    # "+ x.sum() * 0" keeps every head output in the graph when nothing is sampled (DDP)
    zero = logits.sum() * 0 + deltas.sum() * 0
    loss_cls = F.binary_cross_entropy_with_logits(
        logits[sampled], labels[sampled].to(logits.dtype), reduction="sum"
    )
    loss_box = F.smooth_l1_loss(deltas[pos], box_targets[pos], beta=beta, reduction="sum")
    with torch.no_grad():
        correct = ((logits[sampled] > 0) == pos[sampled]).sum()
    return {
        "loss_rpn_cls": loss_cls / num_sampled + zero,
        "loss_rpn_box": loss_box / num_sampled + zero,
        "rpn_num_pos": pos.sum().float(),
        "rpn_num_neg": (sampled & ~pos).sum().float(),
        "rpn_accuracy": correct.float() / num_sampled,
    }


class RPN(nn.Module):
    """Anchors + head + proposals (+ targets and losses in training)."""

    def __init__(self, cfg: RPNConfig, anchor_generator: AnchorGenerator, in_channels: int):
        super().__init__()
        self.cfg = cfg
        self.anchor_generator = anchor_generator
        self.head = RPNHead(
            in_channels,
            anchor_generator.num_anchors,
            channels=cfg.channels,
            conv_depth=cfg.conv_depth,
            norm=cfg.norm,
        )

    def forward(self, features, padded_size, image_sizes, targets=None):
        """Proposals per image, plus losses and intermediates when ``targets`` are given.

        Args:
            features: per level [B, D, H_l, W_l]; padded_size: (Hp, Wp) of the batch tensor;
            image_sizes: (H, W) of each image before padding.

        Returns:
            (list[Proposals], dict of losses / diagnostics, dict of intermediates).
        """
        anchors = self.anchor_generator(features, padded_size)
        logits, deltas = self.head(features)
        proposals = generate_proposals(
            anchors, logits, deltas, image_sizes, cfg=self.cfg, training=self.training
        )
        if targets is None:
            return proposals, {}, {}
        all_anchors, all_logits, all_deltas = (
            torch.cat(anchors),
            torch.cat(logits, 1),
            torch.cat(deltas, 1),
        )
        labels, box_targets = anchor_targets(all_anchors, targets, self.cfg)
        losses = rpn_losses(
            all_logits, all_deltas, labels, box_targets=box_targets, beta=self.cfg.smooth_l1_beta
        )
        intermediates = {
            "anchors": all_anchors,
            "rpn_logits": all_logits,
            "rpn_deltas": all_deltas,
            "rpn_labels": labels,
            "rpn_box_targets": box_targets,
            "rpn_box_weights": (labels == 1)[..., None].expand_as(box_targets).float(),
        }
        return proposals, losses, intermediates
