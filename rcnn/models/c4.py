"""C4 Faster / Mask R-CNN: one stride-16 feature (res4) and res5 run per RoI as the box head.

Shape shorthand: B images, R sampled RoIs (all images), P positive RoIs, D4 / D5 channels of res4 /
res5, S pooled size (14), C classes, M mask size (14).

GluonCV's ``faster_rcnn_resnet50_v1b_voc`` / ``mask_rcnn_resnet50_v1b_coco`` (features.md 1.4-1.5);
He et al. 2017, fig. 4 left. RoIs are RoIAligned 14x14 from res4, res5 (``layer4``, stride 2 on its
first block) turns them into [R, D5, 7, 7], global average pooling feeds the class-specific box
predictor, and the mask head (2x2 deconv + per-class 1x1) reads the same res5 features: 14x14 masks.

Cost: res5 runs once per RoI (about R x the FLOPs of layer4 on a 224-px image), so a C4 model
is several times slower than an FPN one with the same body, on a GPU and much more on a CPU.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rcnn.models.box_head import BoxPredictor
from rcnn.models.config import BoxHeadConfig, MaskHeadConfig, ModelConfig
from rcnn.models.edge_loss import mask_losses
from rcnn.models.mask_head import MaskHead
from rcnn.models.maskiou import build_maskiou_head, maskiou_loss
from rcnn.models.resnet import ResNetBody
from rcnn.models.roi_heads import RoIHeads, box_step, sample_rois
from rcnn.ops.boxes import BoxCoder
from rcnn.ops.masks import mask_targets
from rcnn.ops.pooling import MultiLevelRoIPool

C4_STRIDE = 16


class C4Backbone(nn.Module):
    """Stem + layer1..layer3 of the ResNet: ``forward(x [B,3,H,W]) -> {"c4": [B,D4,H/16,W/16]}``.

    The body's ``layer4`` is handed to the RoI heads (``build_c4``), so the state-dict names are
    ``backbone.body.{conv1,bn1,layer1..3}`` and ``roi_heads.res5``.
    """

    def __init__(self, body: ResNetBody) -> None:
        super().__init__()
        if hasattr(body, "layer4"):
            raise ValueError("C4Backbone takes a ResNetBody whose layer4 was moved to res5")
        self.body = body
        self.out_channels = body.out_channels[2]
        self.strides = (C4_STRIDE,)
        self.out_features = ("c4",)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        body = self.body
        x = body.maxpool(body.relu(body.bn1(body.conv1(x))))
        return {"c4": body.layer3(body.layer2(body.layer1(x)))}


def build_c4(cfg: ModelConfig) -> tuple[C4Backbone, nn.Module, int]:
    """The C4 backbone, res5 (torchvision's ``layer4``) and D5, from one ResNet body."""
    body = ResNetBody(cfg.backbone)  # freezing (freeze_at) already applied, layer4 included
    res5 = body.layer4
    del body.layer4
    return C4Backbone(body), res5, body.out_channels[3]


class C4RoIHeads(RoIHeads):
    """RoIHeads whose box head is res5 + global average pooling; the mask head reads res5 too.

    Inference is ``RoIHeads.forward_test`` (``box_forward`` and ``mask_features`` below); training
    runs res5 once on the sampled RoIs and gives the positives' features to the mask head, as
    GluonCV's ``MaskRCNN`` does.
    """

    def __init__(
        self,
        box_cfg: BoxHeadConfig,
        mask_cfg: MaskHeadConfig | None,
        *,
        res5: nn.Module,
        res5_channels: int,
        num_classes: int,
    ) -> None:
        nn.Module.__init__(self)  # not RoIHeads.__init__: no FPN pooler, no fc box head
        if box_cfg.kind != "res5":
            raise ValueError(f"a C4 model needs box_head.kind 'res5', got {box_cfg.kind!r}")
        self.box_cfg, self.mask_cfg = box_cfg, mask_cfg
        self.box_pool = MultiLevelRoIPool(
            (C4_STRIDE,),
            box_cfg.pooler_resolution,
            sampling_ratio=box_cfg.sampling_ratio,
            mode=box_cfg.pool_mode,
            aligned=box_cfg.aligned,
        )
        self.res5 = res5
        self.box_predictor = BoxPredictor(res5_channels, num_classes)
        self.box_coder = BoxCoder(box_cfg.box_weights, box_cfg.box_clip)
        self.mask_pool = None
        self.mask_head = None
        if mask_cfg is not None:
            self.mask_head = MaskHead(mask_cfg, res5_channels, num_classes)
        res5_size = (box_cfg.pooler_resolution + 1) // 2  # res5 starts with a stride of 2
        self.maskiou_head = build_maskiou_head(
            mask_cfg, res5_channels, num_classes, resolution=res5_size
        )

    def mask_features(self, features: list[Tensor], boxes: list[Tensor]) -> Tensor:
        """res5 features [R, D5, S/2, S/2] of ``boxes`` (one [R_i, 4] per image)."""
        return self.res5(self.box_pool(features, boxes))

    def box_forward(self, features: list[Tensor], rois: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Class logits [R, C+1] and deltas [R, 4C] of ``rois``."""
        return self.box_predictor(self.mask_features(features, rois).mean(dim=(2, 3)))

    def forward_train(self, features, proposals, targets) -> tuple[dict, dict]:
        """Losses / diagnostics and intermediates of one training step."""
        samples = sample_rois(proposals, targets, self.box_cfg)
        top = self.mask_features(features, samples["rois"])  # [R, D5, 7, 7]
        cls_logits, box_deltas = self.box_predictor(top.mean(dim=(2, 3)))
        losses, intermediates = box_step(samples, cls_logits, box_deltas, self.box_cfg)
        gt_classes = intermediates["rcnn_cls_targets"]
        if self.mask_head is not None:
            pos = torch.where(gt_classes > 0)[0]
            tgts = positive_mask_targets(samples, targets, 2 * top.shape[-1])
            logits = self.mask_head(top[pos])
            edge_weight = self.mask_cfg.edge_loss_weight
            classes = gt_classes[pos] - 1
            losses.update(mask_losses(logits, classes, tgts, edge_weight=edge_weight))
            if self.maskiou_head is not None:
                weight = self.mask_cfg.maskiou_weight
                losses.update(
                    maskiou_loss(
                        self.maskiou_head,
                        top[pos],
                        logits,
                        classes=classes,
                        mask_targets=tgts,
                        weight=weight,
                    )
                )
            intermediates["mask_targets"] = tgts
            intermediates["mask_logits"] = logits
        return losses, intermediates


def positive_mask_targets(samples: dict, targets: list, size: int) -> Tensor:
    """[P, size, size] mask targets of the positive RoIs, in ``torch.cat`` order over images."""
    out = []
    for rois, gt_classes, matched, target in zip(
        samples["rois"], samples["gt_classes"], samples["matched"], targets, strict=True
    ):
        pos = torch.where(gt_classes > 0)[0]
        if len(pos) and target.masks is None:
            raise ValueError(f"image {target.image_id}: a Mask R-CNN needs masks in its targets")
        out.append(mask_targets(target.masks or [], matched[pos], rois[pos], size=size))
    return torch.cat(out)
