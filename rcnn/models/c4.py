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

from rcnn.models.config import BoxHeadConfig, MaskHeadConfig, ModelConfig
from rcnn.models.resnet import ResNetBody
from rcnn.models.roi_heads import RoIHeads
from rcnn.structures import BoxPredictions, SampledRoIs

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

    The flow is ``RoIHeads``'s; only the feature hooks differ: ``box_features`` runs res5 on the
    RoIAligned res4 features, ``box_predict`` averages them, and in training the positives' res5
    features go to the mask head as they are (res5 runs once per sampled RoI, as in GluonCV's
    ``MaskRCNN``).
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
        if box_cfg.kind != "res5":
            raise ValueError(f"a C4 model needs box_head.kind 'res5', got {box_cfg.kind!r}")
        super().__init__(
            box_cfg,
            mask_cfg,
            in_channels=res5_channels,
            strides=(C4_STRIDE,),
            num_classes=num_classes,
        )
        self.res5 = res5

    def box_features(self, features: list[Tensor], rois: list[Tensor]) -> Tensor:
        """res5 features [R, D5, S/2, S/2] of ``rois`` (one [R_i, 4] per image)."""
        return self.res5(self.box_pool(features, rois))

    def box_predict(self, box_features: Tensor) -> BoxPredictions:
        """Class logits [R, C+1] and deltas [R, 4C] from res5 features, globally average-pooled."""
        return BoxPredictions(*self.box_predictor(box_features.mean(dim=(2, 3))))

    def mask_features(self, features: list[Tensor], boxes: list[Tensor]) -> Tensor:
        """res5 features [P, D5, S/2, S/2] of ``boxes`` (one [P_i, 4] per image)."""
        return self.box_features(features, boxes)

    def positive_mask_features(
        self, features: list[Tensor], samples: SampledRoIs, box_features: Tensor
    ) -> Tensor:
        """The positive RoIs' rows of ``box_features`` [R, D5, 7, 7] (res5 is not run twice)."""
        return box_features[torch.where(torch.cat(samples.gt_classes) > 0)[0]]
