"""The model configuration: a tree of plain dataclasses (only ``models/build.py`` reads all of it).

Shape shorthand: C classes (no background), A anchors per location.

Defaults are torchvision's Faster R-CNN R50-FPN (``torchvision/models/detection/faster_rcnn.py``);
the presets in ``rcnn/zoo.py`` override what differs (GluonCV's values from its model zoo).
Every field is a primitive, a tuple or a nested dataclass, so the tree dumps to yaml and
``--set a.b=value`` overrides reach every knob.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from rcnn.values import checked

# torchvision's ``bbox_xform_clip`` (rcnn/_utils.py) and GluonCV's ``clip`` for FPN models (4.14).
DEFAULT_BOX_CLIP = math.log(1000.0 / 16)


@dataclass
class InputConfig:
    """How images enter the model.

    Attributes:
        train_short: shorter-side sizes for training (one is drawn per image by the data transform).
        short_mode: ``"choice"`` (pick one of ``train_short``) or ``"range"`` (uniform in between).
        test_short: shorter side at test time (eval mode resizes raw images itself).
        max_size: cap on the longer side.
        pixel_mean: per-channel mean in the units of ``pixel_range`` (RGB order unless ``bgr``).
        pixel_std: per-channel std, same units.
        pixel_range: images are uint8 / 255 * ``pixel_range`` (1.0 for torchvision/GluonCV weights,
            255.0 for Detectron2's).
        bgr: feed channels in BGR order (Detectron2's weights).
        size_divisibility: the padded batch is a multiple of this on both sides.
        train_rounding: the train resize's output side: ``"floor"`` of ``side * scale``
            (torchvision's ``interpolate``) or ``"round"`` (GluonCV's ``resize_short_within``).
    """

    train_short: tuple[int, ...] = checked((800,), "[1, inf)", nonempty=True)
    short_mode: str = checked("choice", ("choice", "range"))
    test_short: int = checked(800, "[1, inf)")
    max_size: int = checked(1333, "[1, inf)")
    pixel_mean: tuple[float, float, float] = checked((0.485, 0.456, 0.406), "(-inf, inf)")
    pixel_std: tuple[float, float, float] = checked((0.229, 0.224, 0.225), "(0, inf)")
    pixel_range: float = checked(1.0, "(0, inf)")
    bgr: bool = False
    size_divisibility: int = checked(32, "[1, inf)")
    train_rounding: str = checked("floor", ("floor", "round"))


@dataclass
class BackboneConfig:
    """The ResNet body.

    Attributes:
        name: ``resnet18|34|50|101|152`` or ``resnext101_32x8d`` (torchvision classes).
        norm: ``"frozen_bn" | "bn" | "gn" | "syncbn"``.
        norm_eps: BN epsilon (torchvision's legacy COCO_V1 detection weights use 0.0).
        freeze_at: 0 trains everything; 1 freezes the stem; k >= 2 also freezes layer1..layer(k-1).
        stem: ``"torchvision"`` (7x7 conv) or ``"v1d"`` (GluonCV's ResNet-v1d: deep 3x3 stem and
            average-pool shortcuts, ``rcnn/models/stems.py``).
        pretrained_base: ImageNet weights for the body (a local file; never downloaded).
        width: channels of layer1 of a BasicBlock body (``resnet10|18|34``), doubled by each later
            layer; 64 is torchvision's (the only width with ImageNet weights). A narrow body
            (``resnet10`` at width 16: one block per stage, channels 16/32/64/128) is for training
            from scratch on a CPU (``mask_rcnn_shapes``).
        weights: explicit ImageNet weight file for ``pretrained_base`` (else
            ``$RCNN_BACKBONE_WEIGHTS``, else torchvision's file in the torch hub cache;
            ``rcnn/models/pretrained.py``).
        stride_in_1x1: a bottleneck that downsamples does so in its first 1x1 conv (MSRA's
            original ResNet, Detectron2's ``RESNETS.STRIDE_IN_1X1``) instead of the 3x3 conv
            (torchvision / GluonCV v1b).
    """

    name: str = "resnet50"
    norm: str = checked("frozen_bn", ("", "frozen_bn", "bn", "gn", "syncbn"))
    norm_eps: float = checked(1e-5, "[0, inf)")
    freeze_at: int = checked(2, "[0, 5]")
    stem: str = checked("torchvision", ("torchvision", "v1d"))
    width: int = checked(64, "[1, inf)")
    pretrained_base: bool = True
    weights: str = ""
    stride_in_1x1: bool = False


@dataclass
class FPNConfig:
    """Feature pyramid P2-P6 (P6 = stride-2 subsampling of P5, torchvision's LastLevelMaxPool).

    Attributes:
        out_channels: channels of every pyramid level.
        norm: ``""`` (conv with bias) or a norm name as in ``BackboneConfig.norm``.
        p6: ``"pool"`` (P5's output subsampled, torchvision / Detectron2) or ``"conv"`` (a 3x3
            stride-2 conv on P5's lateral, before its output conv: GluonCV's
            ``FPNFeatureExpander(use_p6=True)``, whose ``p6_conv`` defaults to True).
    """

    out_channels: int = checked(256, "[1, inf)")
    norm: str = checked("", ("", "frozen_bn", "bn", "gn", "syncbn"))
    p6: str = checked("pool", ("pool", "conv"))


@dataclass
class AnchorConfig:
    """Anchors, one set of sizes per FPN level (P2..P6).

    Two ways to state them (``style``):
      - ``"torchvision"``: ``sizes`` per level and ``aspect_ratios``; widths ``size / sqrt(r)``,
        heights ``size * sqrt(r)``, rounded, centred on the grid points ``k * stride``.
      - ``"gluoncv"``: ``base_size``, ``scales`` (one per level for FPN, all on the single C4
        level) and ``aspect_ratios``: GluonCV 0.11's ``RPNAnchorGenerator`` (integer-rounded
        shapes on a stride-sized window, centre ``(stride - 1) / 2``; ``anchors.py``).
      - ``"detectron2"``: ``sizes`` per level and ``aspect_ratios`` as Detectron2's
        ``DefaultAnchorGenerator``: ``w = sqrt(size^2 / r)``, ``h = r * w``, not rounded,
        size-major order, centred on ``(k + offset) * stride`` with the nominal stride.

    Attributes:
        offset: Detectron2's ``ANCHOR_GENERATOR.OFFSET`` (fraction of a stride; style
            ``detectron2`` only).
    """

    style: str = checked("torchvision", ("torchvision", "gluoncv", "detectron2"))
    sizes: tuple[tuple[float, ...], ...] = checked(
        ((32,), (64,), (128,), (256,), (512,)), "(0, inf)", nonempty=True
    )
    aspect_ratios: tuple[float, ...] = checked((0.5, 1.0, 2.0), "(0, inf)", nonempty=True)
    base_size: int = checked(16, "[1, inf)")
    scales: tuple[float, ...] = checked((2, 4, 8, 16, 32), "(0, inf)")
    offset: float = checked(0.0, "[0, 1)")


@dataclass
class RPNConfig:
    """Region proposal network (head, proposal generation, training targets, loss)."""

    # 0 = the input's channels (torchvision); GluonCV uses 1024
    channels: int = checked(0, "[0, inf)")
    conv_depth: int = checked(1, "[0, inf)")
    norm: str = checked("", ("", "frozen_bn", "bn", "gn", "syncbn"))
    nms_thresh: float = checked(0.7, "(0, 1]")
    pre_nms_topk: tuple[int, int] = checked((2000, 1000), "[1, inf)")  # (train, test)
    post_nms_topk: tuple[int, int] = checked((2000, 1000), "[1, inf)")
    per_level: bool = True  # pre-NMS top-k and NMS per level (torchvision) or over all (GluonCV)
    min_size: float = checked(1e-3, "[0, inf)")
    score_thresh: float = checked(0.0, "[0, 1]")
    fg_iou_thresh: float = checked(0.7, "[0, 1]")
    bg_iou_thresh: float = checked(0.3, "[0, 1]")
    batch_size_per_image: int = checked(256, "[1, inf)")
    positive_fraction: float = checked(0.5, "[0, 1]")
    smooth_l1_beta: float = checked(1.0 / 9, "[0, inf)")
    box_weights: tuple[float, float, float, float] = checked((1.0, 1.0, 1.0, 1.0), "(0, inf)")
    box_clip: float = checked(DEFAULT_BOX_CLIP, "(0, inf)")
    # >= 0: anchors crossing the image by more are ignored (GluonCV 0); < 0: none are
    allowed_border: float = checked(-1.0, "(-inf, inf)")
    # GluonCV's RPNTargetSampler applies the negative rule after the best-anchor rule: a ground
    # truth whose best anchor has IoU < bg_iou_thresh (a small object) gets no positive anchor
    negatives_last: bool = False


@dataclass
class BoxHeadConfig:
    """RoI pooling + box head + class-specific box predictor, training targets and inference."""

    # "2fc" | "4conv1fc" (| "res5" for C4 models)
    kind: str = checked("2fc", ("2fc", "4conv1fc", "res5"))
    pooler_resolution: int = checked(7, "[1, inf)")
    # GluonCV's FPN Mask R-CNN R50/101 pool 14x14 then avg-pool to 7x7
    pool_downsample: int = checked(1, "[1, inf)")
    sampling_ratio: int = checked(2, "[0, inf)")
    pool_mode: str = checked("align", ("align", "pool"))  # "align" | "pool"
    aligned: bool = False
    canonical_scale: int = checked(224, "[1, inf)")
    canonical_level: int = checked(4, "[1, inf)")
    # "torchvision": floor(k0 + log2(sqrt(w h) / 224) + 1e-6); "gluoncv": inclusive pixel sizes,
    # floor(k0 + log2(sqrt((w + 1)(h + 1)) / 224 + 1e-6)) (GluonCV's _pyramid_roi_feats)
    level_rule: str = checked("torchvision", ("torchvision", "gluoncv"))
    num_conv: int = checked(4, "[0, inf)")
    conv_dim: int = checked(256, "[1, inf)")
    fc_dim: int = checked(1024, "[1, inf)")
    norm: str = checked("", ("", "frozen_bn", "bn", "gn", "syncbn"))
    fg_iou_thresh: float = checked(0.5, "[0, 1]")
    bg_iou_thresh: float = checked(0.5, "[0, 1]")
    batch_size_per_image: int = checked(512, "[1, inf)")
    positive_fraction: float = checked(0.25, "[0, 1]")
    box_weights: tuple[float, float, float, float] = checked((10.0, 10.0, 5.0, 5.0), "(0, inf)")
    box_clip: float = checked(DEFAULT_BOX_CLIP, "(0, inf)")
    smooth_l1_beta: float = checked(1.0 / 9, "[0, inf)")
    score_thresh: float = checked(0.05, "[0, 1]")
    nms_thresh: float = checked(0.5, "(0, 1]")
    # GluonCV's nms_topk: best (box, class) pairs entering NMS (-1 = all)
    nms_topk: int = checked(-1, "[-1, inf)")
    # detections narrower / lower are dropped (torchvision; Detectron2 keeps empty boxes: 0)
    min_size: float = checked(1e-2, "[0, inf)")
    # best detections kept per image; -1: all that pass the threshold and NMS (GluonCV's COCO
    # post_nms -1; an exported model needs a fixed count)
    detections_per_img: int = checked(100, "[1, inf)", special=(-1,))
    # clip decoded boxes to the image before NMS (torchvision); False: NMS and masks see them as
    # decoded, as in GluonCV's R-CNN, and only the returned boxes are clipped
    clip_boxes: bool = True


@dataclass
class MaskHeadConfig:
    """Mask branch: RoIAlign, ``num_conv`` 3x3 convs, a 2x deconv, a per-class 1x1 predictor."""

    pooler_resolution: int = checked(14, "[1, inf)")
    sampling_ratio: int = checked(2, "[0, inf)")
    num_conv: int = checked(4, "[0, inf)")
    conv_dim: int = checked(256, "[1, inf)")
    norm: str = checked("", ("", "frozen_bn", "bn", "gn", "syncbn"))
    # pasting into the image: "torchvision" (padded mask on an integer box, torchvision's and
    # GluonCV's geometry) or "aligned" (half-pixel cells over the exact box: Detectron2's)
    paste: str = checked("torchvision", ("torchvision", "aligned"))
    # Sobel edge loss on masks (seed 003); 0 = off
    edge_loss_weight: float = checked(0.0, "[0, inf)")
    # Mask Scoring R-CNN's MaskIoU head (rcnn.models.maskiou)
    maskiou: bool = False
    maskiou_weight: float = checked(1.0, "[0, inf)")
    maskiou_fc_dim: int = checked(1024, "[1, inf)")


@dataclass
class ModelConfig:
    """The whole model.

    Attributes:
        arch: ``"fpn"`` (P2-P6) or ``"c4"`` (single stride-16 feature, res5 box head).
        classes: class names; ``num_classes = len(classes)`` (no background).
        category_ids: the training dataset's category id of each class (what a COCO results
            file names them by); empty: label + 1.
        mask_on: add the mask branch (Mask R-CNN).
    """

    arch: str = checked("fpn", ("fpn", "c4"))
    classes: tuple[str, ...] = ("object",)
    category_ids: tuple[int, ...] = checked((), "(-inf, inf)")
    mask_on: bool = False
    input: InputConfig = field(default_factory=InputConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fpn: FPNConfig = field(default_factory=FPNConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    box_head: BoxHeadConfig = field(default_factory=BoxHeadConfig)
    mask_head: MaskHeadConfig = field(default_factory=MaskHeadConfig)

    @property
    def num_classes(self) -> int:
        return len(self.classes)
