"""RoI heads: proposal sampling and targets, box branch, mask branch, inference post-processing.

Shape shorthand: B images, R sampled RoIs (all images), P positive RoIs, C classes, M mask size,
N detections of an image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms

from rcnn.models.box_head import BoxPredictor, box_losses, build_box_head
from rcnn.models.config import BoxHeadConfig, MaskHeadConfig
from rcnn.models.edge_loss import mask_losses
from rcnn.models.mask_head import MaskHead
from rcnn.models.maskiou import build_maskiou_head, maskiou_loss, rescore
from rcnn.ops.boxes import BoxCoder, clip_boxes, nonempty, remove_small
from rcnn.ops.masks import mask_targets
from rcnn.ops.matching import BalancedSampler, Matcher, match_labels
from rcnn.ops.pooling import MultiLevelRoIPool
from rcnn.structures import Proposals, Targets


def sample_rois(proposals: list[Proposals], targets: list[Targets], cfg: BoxHeadConfig):
    """Append GT to proposals, match, sample and encode (Girshick 2015, sec. 2.3).

    Returns a dict of per-image lists: ``rois`` [R_i, 4], ``gt_classes`` int64 [R_i] in [0, C]
    (0 background), ``matched`` [R_i] gt index, ``box_targets`` [R_i, 4] (zero on negatives).
    """
    matcher = Matcher(cfg.fg_iou_thresh, cfg.bg_iou_thresh)
    sampler = BalancedSampler(cfg.batch_size_per_image, cfg.positive_fraction)
    coder = BoxCoder(cfg.box_weights, cfg.box_clip)
    out = {"rois": [], "gt_classes": [], "matched": [], "box_targets": []}
    for props, target in zip(proposals, targets, strict=True):
        # only usable GT joins the proposals: not crowd/difficult and of positive size
        usable = ~target.ignore & nonempty(target.boxes)
        rois = torch.cat([props.boxes, target.boxes[usable]])
        matched, labels = match_labels(
            matcher, rois, gt_boxes=target.boxes, gt_ignore=target.ignore
        )
        labels = sampler(labels)
        keep = torch.where(labels >= 0)[0]
        rois, matched, is_pos = rois[keep], matched[keep], labels[keep] == 1
        gt_classes = (
            torch.where(is_pos, target.labels[matched] + 1, 0)
            if len(target)
            else (torch.zeros_like(matched))
        )
        box_targets = torch.zeros_like(rois)
        pos = torch.where(is_pos)[0]
        box_targets[pos] = coder.encode(rois[pos], target.boxes[matched[pos]])
        for key, value in zip(out, (rois, gt_classes, matched, box_targets), strict=True):
            out[key].append(value)
    return out


def postprocess_boxes(
    cls_logits: Tensor,
    boxes: Tensor,
    image_size: tuple[int, int],
    cfg: BoxHeadConfig,
) -> tuple[Tensor, Tensor, Tensor]:
    """Softmax, clip, per-class score threshold, drop tiny boxes, per-class NMS, top-k.

    Args:
        cls_logits: [R_i, C+1]; boxes: decoded [R_i, C, 4].

    Returns:
        boxes [N, 4], scores [N] (descending), labels int64 [N] in [0, C).
    """
    num_classes = boxes.shape[1]
    scores = F.softmax(cls_logits, -1)[:, 1:]
    boxes = clip_boxes(boxes, image_size)
    labels = torch.arange(num_classes, device=boxes.device).expand_as(scores)
    boxes, scores, labels = boxes.reshape(-1, 4), scores.reshape(-1), labels.reshape(-1)
    keep = torch.where(scores > cfg.score_thresh)[0]
    if 0 < cfg.nms_topk < len(keep):  # GluonCV's nms_topk: the best pairs enter NMS
        keep = keep[scores[keep].topk(cfg.nms_topk).indices]
    keep = keep[remove_small(boxes[keep], 1e-2)]
    nms_keep = batched_nms(boxes[keep], scores[keep], labels[keep], cfg.nms_thresh)
    limit = None if cfg.detections_per_img < 0 else cfg.detections_per_img  # -1: keep all
    keep = keep[nms_keep[:limit]]
    return boxes[keep], scores[keep], labels[keep]


def box_step(samples: dict, cls_logits: Tensor, box_deltas: Tensor, cfg) -> tuple[dict, dict]:
    """Box losses of sampled RoIs and the tutorial's intermediates (FPN and C4 heads alike).

    Args:
        samples: ``sample_rois``'s output (``rois``, ``matched``, ``gt_classes``, ``box_targets``
            per image); cls_logits: [R, C+1]; box_deltas: [R, 4C]; cfg: the ``BoxHeadConfig``.
    """
    gt_classes = torch.cat(samples["gt_classes"])
    box_targets = torch.cat(samples["box_targets"])
    losses = box_losses(
        cls_logits, box_deltas, gt_classes, box_targets=box_targets, beta=cfg.smooth_l1_beta
    )
    intermediates = {
        "rois": samples["rois"],
        "matched_gt": samples["matched"],
        "rcnn_cls_logits": cls_logits,
        "rcnn_box_deltas": box_deltas,
        "rcnn_cls_targets": gt_classes,
        "rcnn_box_targets": box_targets,
        "rcnn_box_weights": (gt_classes > 0)[:, None].expand_as(box_targets).float(),
    }
    return losses, intermediates


class RoIHeads(nn.Module):
    """Box branch (+ mask branch): losses in training, detections in inference."""

    def __init__(
        self,
        box_cfg: BoxHeadConfig,
        mask_cfg: MaskHeadConfig | None,
        *,
        in_channels: int,
        strides: tuple[int, ...],
        num_classes: int,
    ) -> None:
        super().__init__()
        self.box_cfg, self.mask_cfg = box_cfg, mask_cfg
        pool_kwargs = {
            "mode": box_cfg.pool_mode,
            "aligned": box_cfg.aligned,
            "canonical_scale": box_cfg.canonical_scale,
            "canonical_level": box_cfg.canonical_level,
        }
        self.box_pool = MultiLevelRoIPool(
            strides, box_cfg.pooler_resolution, sampling_ratio=box_cfg.sampling_ratio, **pool_kwargs
        )
        self.box_head = build_box_head(box_cfg, in_channels)
        self.box_predictor = BoxPredictor(self.box_head.out_dim, num_classes)
        self.box_coder = BoxCoder(box_cfg.box_weights, box_cfg.box_clip)
        self.mask_pool = self.mask_head = None
        if mask_cfg is not None:
            self.mask_pool = MultiLevelRoIPool(
                strides,
                mask_cfg.pooler_resolution,
                sampling_ratio=mask_cfg.sampling_ratio,
                **pool_kwargs,
            )
            self.mask_head = MaskHead(mask_cfg, in_channels, num_classes)
        self.maskiou_head = build_maskiou_head(
            mask_cfg, in_channels, num_classes, resolution=getattr(mask_cfg, "pooler_resolution", 0)
        )

    def box_forward(self, features: list[Tensor], rois: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Class logits [R, C+1] and deltas [R, 4C] of ``rois`` (one [R_i, 4] per image)."""
        pooled = self.box_pool(features, rois)
        if self.box_cfg.pool_downsample > 1:
            pooled = F.avg_pool2d(pooled, self.box_cfg.pool_downsample)
        return self.box_predictor(self.box_head(pooled))

    def forward_train(self, features, proposals, targets) -> tuple[dict, dict]:
        """Losses / diagnostics and intermediates of one training step."""
        samples = sample_rois(proposals, targets, self.box_cfg)
        cls_logits, box_deltas = self.box_forward(features, samples["rois"])
        losses, intermediates = box_step(samples, cls_logits, box_deltas, self.box_cfg)
        if self.mask_head is not None:
            mask_losses_, mask_targets_, mask_logits = self.mask_train(features, samples, targets)
            losses.update(mask_losses_)
            intermediates["mask_targets"] = mask_targets_
            intermediates["mask_logits"] = mask_logits
        return losses, intermediates

    def mask_features(self, features: list[Tensor], boxes: list[Tensor]) -> Tensor:
        """Input of the mask head for ``boxes`` (one [R_i, 4] per image): RoIAlign (C4: + res5)."""
        return self.mask_pool(features, boxes)

    def mask_train(self, features, samples, targets) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """Mask losses on positive RoIs; targets cropped from each instance's polygons / RLE.

        Returns:
            the losses, the mask targets [P, M, M] and the mask logits [P, C, M, M].
        """
        size = 2 * self.mask_cfg.pooler_resolution
        pos_rois, classes, mask_tgts = [], [], []
        for rois, gt_classes, matched, target in zip(
            samples["rois"], samples["gt_classes"], samples["matched"], targets, strict=True
        ):
            pos = torch.where(gt_classes > 0)[0]
            pos_rois.append(rois[pos])
            classes.append(gt_classes[pos] - 1)
            if len(pos) and target.masks is None:
                raise ValueError(
                    f"image {target.image_id}: a Mask R-CNN needs masks in its targets"
                )
            gt_masks = target.masks if target.masks is not None else []
            mask_tgts.append(mask_targets(gt_masks, matched[pos], rois[pos], size=size))
        pooled = self.mask_features(features, pos_rois)
        logits = self.mask_head(pooled)
        mask_tgts, classes = torch.cat(mask_tgts), torch.cat(classes)
        edge_weight = self.mask_cfg.edge_loss_weight
        losses = mask_losses(logits, classes, mask_tgts, edge_weight=edge_weight)
        if self.maskiou_head is not None:
            weight = self.mask_cfg.maskiou_weight
            losses.update(
                maskiou_loss(
                    self.maskiou_head,
                    pooled,
                    logits,
                    classes=classes,
                    mask_targets=mask_tgts,
                    weight=weight,
                )
            )
        return losses, mask_tgts, logits

    @torch.no_grad()
    def forward_test(self, features, proposals, image_sizes) -> list[dict[str, Tensor]]:
        """Detections per image (padded-image coordinates): boxes, scores, labels[, mask_probs]."""
        rois = [p.boxes for p in proposals]
        cls_logits, box_deltas = self.box_forward(features, rois)
        counts = [len(r) for r in rois]
        decoded = self.box_coder.decode(box_deltas, torch.cat(rois))
        decoded = decoded.view(len(box_deltas), box_deltas.shape[1] // 4, 4)  # R may be 0
        results = []
        for logits, boxes, size in zip(
            cls_logits.split(counts), decoded.split(counts), image_sizes, strict=True
        ):
            det_boxes, scores, labels = postprocess_boxes(logits, boxes, size, self.box_cfg)
            results.append({"boxes": det_boxes, "scores": scores, "labels": labels})
        if self.mask_head is not None:
            self.mask_test(features, results)
        return results

    def mask_test(self, features: list[Tensor], results: list[dict[str, Tensor]]) -> None:
        """Adds ``mask_probs`` [N, M, M] to each image's ``results``; with the MaskIoU head, the
        scores become class score x predicted mask IoU (``rcnn.models.maskiou``)."""
        pooled = self.mask_features(features, [r["boxes"] for r in results])
        logits = self.mask_head(pooled)
        labels = torch.cat([r["labels"] for r in results])
        probs = logits[torch.arange(len(labels), device=labels.device), labels].sigmoid()
        counts = [len(r["boxes"]) for r in results]
        if self.maskiou_head is not None:
            scores = torch.cat([r["scores"] for r in results])
            scores = rescore(self.maskiou_head, pooled, probs, labels=labels, scores=scores)
            for result, rescored in zip(results, scores.split(counts), strict=True):
                result["scores"] = rescored
        for result, mask_probs in zip(results, probs.split(counts), strict=True):
            result["mask_probs"] = mask_probs
            if self.maskiou_head is not None:  # sorted by the new scores (Detections' order)
                order = result["scores"].argsort(descending=True)
                result.update({key: value[order] for key, value in result.items()})
