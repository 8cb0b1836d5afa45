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
from rcnn.structures import (
    BoxPredictions,
    HeadDetections,
    MaskPredictions,
    Proposals,
    SampledRoIs,
    Targets,
)


def sample_rois(
    proposals: list[Proposals], targets: list[Targets], cfg: BoxHeadConfig
) -> SampledRoIs:
    """Append GT to proposals, match, sample and encode (Girshick 2015, sec. 2.3).

    Args:
        proposals: per image, the RPN's [K_i] proposals (padded-batch pixels).
        targets: per image, the ground truth in the same pixels.

    Returns:
        ``SampledRoIs``: per image R_i <= ``batch_size_per_image`` RoIs, at most
        ``positive_fraction`` of them positive, with their classes, matches and box targets.
    """
    matcher = Matcher(cfg.fg_iou_thresh, cfg.bg_iou_thresh)
    sampler = BalancedSampler(cfg.batch_size_per_image, cfg.positive_fraction)
    coder = BoxCoder(cfg.box_weights, cfg.box_clip)
    out = SampledRoIs([], [], [], [])
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
        out.rois.append(rois)
        out.gt_classes.append(gt_classes)
        out.matched.append(matched)
        out.box_targets.append(box_targets)
    return out


def positive_mask_targets(samples: SampledRoIs, targets: list[Targets], size: int) -> Tensor:
    """[P, size, size] 0/1 mask targets of the positive RoIs, in ``torch.cat`` order over images.

    Each target is the matched instance's polygons / RLE cropped to the RoI and rasterised.
    """
    out = []
    for rois, pos, matched, target in zip(
        samples.rois, samples.positives(), samples.matched, targets, strict=True
    ):
        if len(pos) and target.masks is None:
            raise ValueError(f"image {target.image_id}: a Mask R-CNN needs masks in its targets")
        out.append(mask_targets(target.masks or [], matched[pos], rois[pos], size=size))
    return torch.cat(out)


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
    if cfg.clip_boxes:
        boxes = clip_boxes(boxes, image_size)
    labels = torch.arange(num_classes, device=boxes.device).expand_as(scores)
    boxes, scores, labels = boxes.reshape(-1, 4), scores.reshape(-1), labels.reshape(-1)
    keep = torch.where(scores > cfg.score_thresh)[0]
    if 0 < cfg.nms_topk < len(keep):  # GluonCV's nms_topk: the best pairs enter NMS
        keep = keep[scores[keep].topk(cfg.nms_topk).indices]
    keep = keep[remove_small(boxes[keep], cfg.min_size)]
    nms_keep = batched_nms(boxes[keep], scores[keep], labels[keep], cfg.nms_thresh)
    limit = None if cfg.detections_per_img < 0 else cfg.detections_per_img  # -1: keep all
    keep = keep[nms_keep[:limit]]
    return boxes[keep], scores[keep], labels[keep]


def box_intermediates(samples: SampledRoIs, preds: BoxPredictions) -> dict:
    """The tutorial's RCNN intermediates of one step (``return_intermediates=True``).

    Keys (GluonCV's names in brackets): ``rois`` [R_i, 4] and ``matched_gt`` [R_i] per image
    (``roi``, ``matches``), ``rcnn_cls_logits`` [R, C+1], ``rcnn_box_deltas`` [R, 4C],
    ``rcnn_cls_targets`` [R] (0 background), ``rcnn_box_targets`` / ``rcnn_box_weights`` [R, 4].
    """
    gt_classes = torch.cat(samples.gt_classes)
    box_targets = torch.cat(samples.box_targets)
    return {
        "rois": samples.rois,
        "matched_gt": samples.matched,
        "rcnn_cls_logits": preds.cls_logits,
        "rcnn_box_deltas": preds.box_deltas,
        "rcnn_cls_targets": gt_classes,
        "rcnn_box_targets": box_targets,
        "rcnn_box_weights": (gt_classes > 0)[:, None].expand_as(box_targets).float(),
    }


class RoIHeads(nn.Module):
    """Box branch (+ mask branch): losses in training, detections in inference.

    The flow, shared by FPN and C4 heads (``C4RoIHeads`` overrides the feature hooks only):
    ``sample_rois`` -> ``SampledRoIs``; ``box_features`` -> ``box_predict`` -> ``BoxPredictions``
    -> ``box_losses`` (training) or ``detect`` -> ``HeadDetections`` (inference); mask branch:
    ``mask_features`` (training: ``positive_mask_features``) -> ``MaskPredictions``.

    A box head of kind ``"res5"`` (C4 models) is no module of this class: ``C4RoIHeads`` adds
    res5, whose output is also the mask head's input (no mask pooler).
    """

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
        per_roi_res5 = box_cfg.kind == "res5"
        self.box_pool = MultiLevelRoIPool(
            strides,
            box_cfg.pooler_resolution,
            sampling_ratio=box_cfg.sampling_ratio,
            **_pool_options(box_cfg),
        )
        self.box_head = None if per_roi_res5 else build_box_head(box_cfg, in_channels)
        box_dim = in_channels if self.box_head is None else self.box_head.out_dim
        self.box_predictor = BoxPredictor(box_dim, num_classes)
        self.box_coder = BoxCoder(box_cfg.box_weights, box_cfg.box_clip)
        self.mask_pool = self.mask_head = None
        if mask_cfg is not None:
            if not per_roi_res5:
                self.mask_pool = MultiLevelRoIPool(
                    strides,
                    mask_cfg.pooler_resolution,
                    sampling_ratio=mask_cfg.sampling_ratio,
                    **_pool_options(box_cfg),
                )
            self.mask_head = MaskHead(mask_cfg, in_channels, num_classes)
        # the mask head's input size: the mask pooler's, or res5's (stride 2) on the box pooler's
        size = (box_cfg.pooler_resolution + 1) // 2 if per_roi_res5 else None
        self.maskiou_head = build_maskiou_head(
            mask_cfg, in_channels, num_classes,
            resolution=size or getattr(mask_cfg, "pooler_resolution", 0),
        )  # fmt: skip

    def box_features(self, features: list[Tensor], rois: list[Tensor]) -> Tensor:
        """Pooled features [R, D, S, S] of ``rois`` (one [R_i, 4] per image)."""
        pooled = self.box_pool(features, rois)
        step = self.box_cfg.pool_downsample
        if step > 1:  # GluonCV's box_features[0]: AvgPool2D(3, strides=2, padding=1) for step 2
            pooled = F.avg_pool2d(pooled, 2 * step - 1, stride=step, padding=step - 1)
        return pooled

    def box_predict(self, box_features: Tensor) -> BoxPredictions:
        """Class logits [R, C+1] and deltas [R, 4C] from ``box_features``' output."""
        return BoxPredictions(*self.box_predictor(self.box_head(box_features)))

    def mask_features(self, features: list[Tensor], boxes: list[Tensor]) -> Tensor:
        """Input [P, D, S, S] of the mask head for ``boxes`` (one [P_i, 4] per image)."""
        return self.mask_pool(features, boxes)

    def positive_mask_features(
        self, features: list[Tensor], samples: SampledRoIs, box_features: Tensor
    ) -> Tensor:
        """The mask head's input [P, D, S, S] for the positive sampled RoIs (training)."""
        return self.mask_features(features, samples.positive_rois())

    def forward_train(
        self, features: list[Tensor], proposals: list[Proposals], targets: list[Targets]
    ) -> tuple[dict[str, Tensor], dict]:
        """Losses and diagnostics (a flat dict) and the tutorial's intermediates of one step."""
        samples = sample_rois(proposals, targets, self.box_cfg)
        box_feats = self.box_features(features, samples.rois)
        preds = self.box_predict(box_feats)
        intermediates = box_intermediates(samples, preds)
        losses = box_losses(
            preds.cls_logits,
            preds.box_deltas,
            intermediates["rcnn_cls_targets"],
            box_targets=intermediates["rcnn_box_targets"],
            beta=self.box_cfg.smooth_l1_beta,
        )
        if self.mask_head is not None:
            classes = torch.cat([c[c > 0] - 1 for c in samples.gt_classes])
            mask_feats = self.positive_mask_features(features, samples, box_feats)
            masks = MaskPredictions(self.mask_head(mask_feats), classes)
            mask_tgts = positive_mask_targets(samples, targets, masks.logits.shape[-1])
            edge_weight = self.mask_cfg.edge_loss_weight
            losses.update(mask_losses(masks.logits, classes, mask_tgts, edge_weight=edge_weight))
            if self.maskiou_head is not None:
                weight = self.mask_cfg.maskiou_weight
                losses.update(
                    maskiou_loss(self.maskiou_head, mask_feats, masks.logits, classes=classes,
                                 mask_targets=mask_tgts, weight=weight)
                )  # fmt: skip
            intermediates["mask_targets"] = mask_tgts
            intermediates["mask_logits"] = masks.logits
        return losses, intermediates

    def detect(
        self, preds: BoxPredictions, rois: list[Tensor], image_sizes: list[tuple[int, int]]
    ) -> list[HeadDetections]:
        """Decode ``preds`` of ``rois`` (one [R_i, 4] per image) into each image's detections."""
        counts = [len(r) for r in rois]
        decoded = self.box_coder.decode(preds.box_deltas, torch.cat(rois))
        decoded = decoded.view(len(preds), preds.box_deltas.shape[1] // 4, 4)  # R may be 0
        return [
            HeadDetections(*postprocess_boxes(logits, boxes, size, self.box_cfg))
            for logits, boxes, size in zip(
                preds.cls_logits.split(counts), decoded.split(counts), image_sizes, strict=True
            )
        ]

    @torch.no_grad()
    def forward_test(
        self, features: list[Tensor], proposals: list[Proposals], image_sizes
    ) -> list[HeadDetections]:
        """Detections per image in padded-image coordinates (mask probabilities per box)."""
        rois = [p.boxes for p in proposals]
        results = self.detect(
            self.box_predict(self.box_features(features, rois)), rois, image_sizes
        )
        if self.mask_head is not None:
            self.mask_test(features, results)
        return results

    def mask_test(self, features: list[Tensor], results: list[HeadDetections]) -> None:
        """Sets each result's ``mask_probs`` [N, M, M]; with the MaskIoU head, the scores become
        class score x predicted mask IoU (``rcnn.models.maskiou``), re-sorted."""
        boxes = [r.boxes for r in results]
        labels = torch.cat([r.labels for r in results])
        mask_feats = self.mask_features(features, boxes)
        probs = MaskPredictions(self.mask_head(mask_feats), labels).class_logits().sigmoid()
        counts = [len(b) for b in boxes]
        if self.maskiou_head is not None:
            scores = torch.cat([r.scores for r in results])
            scores = rescore(self.maskiou_head, mask_feats, probs, labels=labels, scores=scores)
            for result, rescored in zip(results, scores.split(counts), strict=True):
                result.scores = rescored
        for result, mask_probs in zip(results, probs.split(counts), strict=True):
            result.mask_probs = mask_probs
            if self.maskiou_head is not None:  # sorted by the new scores (Detections' order)
                order = result.scores.argsort(descending=True)
                result.boxes, result.scores = result.boxes[order], result.scores[order]
                result.labels, result.mask_probs = result.labels[order], mask_probs[order]


def _pool_options(cfg: BoxHeadConfig) -> dict:
    """RoI pooling options shared by the box and mask poolers."""
    return {
        "mode": cfg.pool_mode,
        "aligned": cfg.aligned,
        "canonical_scale": cfg.canonical_scale,
        "canonical_level": cfg.canonical_level,
        "level_rule": cfg.level_rule,
    }
