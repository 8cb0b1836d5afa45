"""Detectron2's R-CNN config (its yaml, or a model-zoo name) -> our ``ModelConfig``.

Only the keys our model has a meaning for are read; values we cannot reproduce (group norm, a
class-agnostic box regressor, dilated res5, RoIPool, ...) are an error naming the key, so a
converted model never silently differs from the one Detectron2 would run. Detectron2's defaults
(``detectron2/config/defaults.py``) and its ``Base-RCNN-FPN`` / ``Base-RCNN-C4`` files are restated
in ``DEFAULTS`` / ``BASES`` so that a zoo name needs no Detectron2 checkout.
"""

from __future__ import annotations

import os
import re

import yaml

from rcnn.data.class_names import COCO_CLASSES
from rcnn.errors import CheckpointError
from rcnn.models.config import ModelConfig

# the keys read, with Detectron2's defaults (defaults.py)
DEFAULTS = {
    "MODEL.MASK_ON": False,
    "MODEL.PIXEL_MEAN": [103.530, 116.280, 123.675],
    "MODEL.PIXEL_STD": [1.0, 1.0, 1.0],
    "INPUT.FORMAT": "BGR",
    "INPUT.MIN_SIZE_TRAIN": [800],
    "INPUT.MIN_SIZE_TRAIN_SAMPLING": "choice",
    "INPUT.MAX_SIZE_TRAIN": 1333,
    "INPUT.MIN_SIZE_TEST": 800,
    "INPUT.MAX_SIZE_TEST": 1333,
    "MODEL.BACKBONE.NAME": "build_resnet_backbone",
    "MODEL.BACKBONE.FREEZE_AT": 2,
    "MODEL.RESNETS.DEPTH": 50,
    "MODEL.RESNETS.NORM": "FrozenBN",
    "MODEL.RESNETS.STRIDE_IN_1X1": True,
    "MODEL.RESNETS.NUM_GROUPS": 1,
    "MODEL.RESNETS.WIDTH_PER_GROUP": 64,
    "MODEL.RESNETS.RES5_DILATION": 1,
    "MODEL.FPN.NORM": "",
    "MODEL.ANCHOR_GENERATOR.SIZES": [[32, 64, 128, 256, 512]],
    "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS": [[0.5, 1.0, 2.0]],
    "MODEL.ANCHOR_GENERATOR.OFFSET": 0.0,
    "MODEL.RPN.BOUNDARY_THRESH": -1,
    "MODEL.RPN.IOU_THRESHOLDS": [0.3, 0.7],
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE": 256,
    "MODEL.RPN.POSITIVE_FRACTION": 0.5,
    "MODEL.RPN.BBOX_REG_WEIGHTS": [1.0, 1.0, 1.0, 1.0],
    "MODEL.RPN.SMOOTH_L1_BETA": 0.0,
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN": 12000,
    "MODEL.RPN.PRE_NMS_TOPK_TEST": 6000,
    "MODEL.RPN.POST_NMS_TOPK_TRAIN": 2000,
    "MODEL.RPN.POST_NMS_TOPK_TEST": 1000,
    "MODEL.RPN.NMS_THRESH": 0.7,
    "MODEL.ROI_HEADS.NAME": "Res5ROIHeads",
    "MODEL.ROI_HEADS.NUM_CLASSES": 80,
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 512,
    "MODEL.ROI_HEADS.POSITIVE_FRACTION": 0.25,
    "MODEL.ROI_HEADS.IOU_THRESHOLDS": [0.5],
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.05,
    "MODEL.ROI_HEADS.NMS_THRESH_TEST": 0.5,
    "MODEL.ROI_BOX_HEAD.NAME": "",
    "MODEL.ROI_BOX_HEAD.NUM_FC": 0,
    "MODEL.ROI_BOX_HEAD.NUM_CONV": 0,
    "MODEL.ROI_BOX_HEAD.FC_DIM": 1024,
    "MODEL.ROI_BOX_HEAD.CONV_DIM": 256,
    "MODEL.ROI_BOX_HEAD.NORM": "",
    "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION": 14,
    "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO": 0,
    "MODEL.ROI_BOX_HEAD.POOLER_TYPE": "ROIAlignV2",
    "MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS": [10.0, 10.0, 5.0, 5.0],
    "MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA": 0.0,
    "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG": False,
    "MODEL.ROI_MASK_HEAD.NUM_CONV": 0,
    "MODEL.ROI_MASK_HEAD.CONV_DIM": 256,
    "MODEL.ROI_MASK_HEAD.NORM": "",
    "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION": 14,
    "MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO": 0,
    "MODEL.ROI_MASK_HEAD.POOLER_TYPE": "ROIAlignV2",
    "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK": False,
    "TEST.DETECTIONS_PER_IMAGE": 100,
}
# configs/Base-RCNN-FPN.yaml and Base-RCNN-C4.yaml (the keys above they set)
BASES = {
    "FPN": {
        "MODEL.BACKBONE.NAME": "build_resnet_fpn_backbone",
        "MODEL.ANCHOR_GENERATOR.SIZES": [[32], [64], [128], [256], [512]],
        "MODEL.RPN.PRE_NMS_TOPK_TRAIN": 2000,
        "MODEL.RPN.PRE_NMS_TOPK_TEST": 1000,
        "MODEL.RPN.POST_NMS_TOPK_TRAIN": 1000,
        "MODEL.RPN.POST_NMS_TOPK_TEST": 1000,
        "MODEL.ROI_HEADS.NAME": "StandardROIHeads",
        "MODEL.ROI_BOX_HEAD.NAME": "FastRCNNConvFCHead",
        "MODEL.ROI_BOX_HEAD.NUM_FC": 2,
        "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION": 7,
        "MODEL.ROI_MASK_HEAD.NUM_CONV": 4,
        "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION": 14,
        "INPUT.MIN_SIZE_TRAIN": [640, 672, 704, 736, 768, 800],
    },
    "C4": {
        "MODEL.RPN.PRE_NMS_TOPK_TEST": 6000,
        "MODEL.RPN.POST_NMS_TOPK_TEST": 1000,
        "MODEL.ROI_HEADS.NAME": "Res5ROIHeads",
        "INPUT.MIN_SIZE_TRAIN": [640, 672, 704, 736, 768, 800],
    },
}
ZOO_NAME = re.compile(r"(faster|mask)_rcnn_R_(50|101)_(FPN|C4)_(1x|3x)")


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def read_yaml(path: str, depth: int = 0) -> dict:
    """Detectron2's yaml flattened to dotted keys, its ``_BASE_`` chain merged underneath."""
    if depth > 8:
        raise CheckpointError(f"{path}: _BASE_ chain deeper than 8 files")
    try:
        with open(path, encoding="utf-8") as handle:
            tree = yaml.safe_load(handle) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise CheckpointError(f"{path}: cannot read as a Detectron2 config ({exc})") from None
    base = tree.pop("_BASE_", None)
    merged = {}
    if base:
        merged = read_yaml(os.path.join(os.path.dirname(path), base), depth + 1)
    merged.update(_flatten(tree))
    return merged


def zoo_settings(name: str) -> dict:
    """Dotted keys of a Detectron2 model-zoo config named like ``mask_rcnn_R_50_FPN_3x``."""
    match = ZOO_NAME.search(name)
    if match is None:
        raise CheckpointError(
            f"{name!r}: not a Detectron2 config file or model-zoo name; expected a yaml path or "
            "{faster,mask}_rcnn_R_{50,101}_{FPN,C4}_{1x,3x}"
        )
    kind, depth, arch, _ = match.groups()  # 1x / 3x differ in the schedule only
    settings = dict(BASES[arch])
    settings["MODEL.MASK_ON"] = kind == "mask"
    settings["MODEL.RESNETS.DEPTH"] = int(depth)
    return settings


def settings_of(config) -> dict:
    """Every key of ``DEFAULTS`` for ``config`` (a yaml path or a zoo name, or a dict of keys)."""
    merged = dict(DEFAULTS)
    if isinstance(config, dict):
        merged.update(
            _flatten(config) if any(isinstance(v, dict) for v in config.values()) else config
        )
    elif os.path.isfile(os.fspath(config)):
        merged.update(read_yaml(os.fspath(config)))
    else:
        merged.update(zoo_settings(os.fspath(config)))
    return merged


NORMS = {"FrozenBN": "frozen_bn", "BN": "bn", "SyncBN": "syncbn", "GN": "gn", "": ""}
POOLERS = {"ROIAlignV2": ("align", True), "ROIAlign": ("align", False), "ROIPool": ("pool", False)}


def _norm(value: str, key: str) -> str:
    if value not in NORMS:
        raise CheckpointError(f"Detectron2 config {key}={value!r}: expected one of {list(NORMS)}")
    return NORMS[value]


def _check_supported(s: dict) -> None:
    """A ``CheckpointError`` naming the first setting our model cannot reproduce."""
    unsupported = [
        ("MODEL.BACKBONE.NAME", s["MODEL.BACKBONE.NAME"]
         not in ("build_resnet_backbone", "build_resnet_fpn_backbone")),
        ("MODEL.ROI_HEADS.NAME", s["MODEL.ROI_HEADS.NAME"]
         not in ("StandardROIHeads", "Res5ROIHeads")),
        ("MODEL.RESNETS.RES5_DILATION", s["MODEL.RESNETS.RES5_DILATION"] != 1),
        ("MODEL.RESNETS.NUM_GROUPS", (s["MODEL.RESNETS.NUM_GROUPS"],
         s["MODEL.RESNETS.WIDTH_PER_GROUP"]) not in ((1, 64), (32, 8))),
        ("MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG",
         bool(s["MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG"])),
        ("MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK", bool(s["MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK"])),
        ("MODEL.ROI_BOX_HEAD.POOLER_TYPE", s["MODEL.ROI_BOX_HEAD.POOLER_TYPE"] not in POOLERS),
        ("MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS",
         len(s["MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS"]) != 1),
    ]  # fmt: skip
    for key, bad in unsupported:
        if bad:
            raise CheckpointError(f"Detectron2 config {key}={s[key]!r} has no equivalent in rcnn")


def _box_head(cfg: ModelConfig, s: dict, *, c4: bool) -> None:
    box = cfg.box_head
    num_conv, num_fc = s["MODEL.ROI_BOX_HEAD.NUM_CONV"], s["MODEL.ROI_BOX_HEAD.NUM_FC"]
    if c4:
        box.kind = "res5"
    elif (num_conv, num_fc) == (0, 2):
        box.kind = "2fc"
    elif num_fc == 1:
        box.kind, box.num_conv = "4conv1fc", num_conv
    else:
        raise CheckpointError(
            f"Detectron2 box head NUM_CONV={num_conv} NUM_FC={num_fc} unsupported"
        )
    box.pool_mode, box.aligned = POOLERS[s["MODEL.ROI_BOX_HEAD.POOLER_TYPE"]]
    box.pooler_resolution = s["MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION"]
    box.sampling_ratio = s["MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO"]
    box.fc_dim, box.conv_dim = s["MODEL.ROI_BOX_HEAD.FC_DIM"], s["MODEL.ROI_BOX_HEAD.CONV_DIM"]
    box.norm = _norm(s["MODEL.ROI_BOX_HEAD.NORM"], "MODEL.ROI_BOX_HEAD.NORM")
    box.fg_iou_thresh = box.bg_iou_thresh = float(s["MODEL.ROI_HEADS.IOU_THRESHOLDS"][0])
    box.batch_size_per_image = s["MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE"]
    box.positive_fraction = s["MODEL.ROI_HEADS.POSITIVE_FRACTION"]
    box.box_weights = tuple(float(w) for w in s["MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS"])
    box.smooth_l1_beta = float(s["MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA"])
    box.score_thresh = float(s["MODEL.ROI_HEADS.SCORE_THRESH_TEST"])
    box.nms_thresh = float(s["MODEL.ROI_HEADS.NMS_THRESH_TEST"])
    box.detections_per_img = s["TEST.DETECTIONS_PER_IMAGE"]
    box.min_size = 0.0  # fast_rcnn_inference keeps empty (clipped) boxes
    mask = cfg.mask_head
    mask.pooler_resolution = s["MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION"]
    mask.sampling_ratio = s["MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO"]
    mask.num_conv, mask.conv_dim = (
        s["MODEL.ROI_MASK_HEAD.NUM_CONV"],
        s["MODEL.ROI_MASK_HEAD.CONV_DIM"],
    )
    mask.norm = _norm(s["MODEL.ROI_MASK_HEAD.NORM"], "MODEL.ROI_MASK_HEAD.NORM")
    mask.paste = "aligned"  # paste_masks_in_image: grid_sample over the exact box


def _rpn(cfg: ModelConfig, s: dict) -> None:
    anchors = cfg.anchors
    anchors.style = "detectron2"
    anchors.sizes = tuple(
        tuple(float(v) for v in level) for level in s["MODEL.ANCHOR_GENERATOR.SIZES"]
    )
    anchors.aspect_ratios = tuple(float(r) for r in s["MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS"][0])
    anchors.offset = float(s["MODEL.ANCHOR_GENERATOR.OFFSET"])
    rpn = cfg.rpn
    rpn.nms_thresh = float(s["MODEL.RPN.NMS_THRESH"])
    rpn.pre_nms_topk = (s["MODEL.RPN.PRE_NMS_TOPK_TRAIN"], s["MODEL.RPN.PRE_NMS_TOPK_TEST"])
    rpn.post_nms_topk = (s["MODEL.RPN.POST_NMS_TOPK_TRAIN"], s["MODEL.RPN.POST_NMS_TOPK_TEST"])
    rpn.per_level = True  # find_top_rpn_proposals: top-k per level, NMS per level
    rpn.min_size = 1e-6  # Boxes.nonempty(threshold=0): width and height > 0
    rpn.bg_iou_thresh, rpn.fg_iou_thresh = (float(v) for v in s["MODEL.RPN.IOU_THRESHOLDS"])
    rpn.batch_size_per_image = s["MODEL.RPN.BATCH_SIZE_PER_IMAGE"]
    rpn.positive_fraction = s["MODEL.RPN.POSITIVE_FRACTION"]
    rpn.box_weights = tuple(float(w) for w in s["MODEL.RPN.BBOX_REG_WEIGHTS"])
    rpn.smooth_l1_beta = float(s["MODEL.RPN.SMOOTH_L1_BETA"])
    rpn.allowed_border = float(s["MODEL.RPN.BOUNDARY_THRESH"])


def detectron2_config(config) -> ModelConfig:
    """Our ``ModelConfig`` equal to Detectron2's ``config`` (a yaml path, a zoo name or a dict of
    its keys); ``CheckpointError`` for a setting rcnn cannot reproduce."""
    s = settings_of(config)
    _check_supported(s)
    c4 = s["MODEL.ROI_HEADS.NAME"] == "Res5ROIHeads"
    num_classes = s["MODEL.ROI_HEADS.NUM_CLASSES"]
    classes = (
        COCO_CLASSES
        if num_classes == len(COCO_CLASSES)
        else tuple(f"class_{i + 1}" for i in range(num_classes))
    )
    cfg = ModelConfig(arch="c4" if c4 else "fpn", classes=classes, mask_on=bool(s["MODEL.MASK_ON"]))
    inp = cfg.input
    inp.pixel_mean = tuple(float(v) for v in s["MODEL.PIXEL_MEAN"])
    inp.pixel_std = tuple(float(v) for v in s["MODEL.PIXEL_STD"])
    inp.pixel_range, inp.bgr = 255.0, s["INPUT.FORMAT"] == "BGR"
    train_short = s["INPUT.MIN_SIZE_TRAIN"]
    inp.train_short = tuple(
        int(v) for v in (train_short if isinstance(train_short, list | tuple) else [train_short])
    )
    inp.short_mode = "range" if s["INPUT.MIN_SIZE_TRAIN_SAMPLING"] == "range" else "choice"
    inp.test_short, inp.max_size = s["INPUT.MIN_SIZE_TEST"], s["INPUT.MAX_SIZE_TEST"]
    # the FPN backbone pads to 32 (size_divisibility); the C4 one does not pad
    inp.size_divisibility = 1 if c4 else 32
    body = cfg.backbone
    depth = s["MODEL.RESNETS.DEPTH"]
    body.name = f"resnet{depth}" if s["MODEL.RESNETS.NUM_GROUPS"] == 1 else f"resnext{depth}_32x8d"
    body.norm = _norm(s["MODEL.RESNETS.NORM"], "MODEL.RESNETS.NORM")
    body.stride_in_1x1 = bool(s["MODEL.RESNETS.STRIDE_IN_1X1"])
    body.freeze_at = s["MODEL.BACKBONE.FREEZE_AT"]
    body.pretrained_base = False
    cfg.fpn.norm = _norm(s["MODEL.FPN.NORM"], "MODEL.FPN.NORM")
    _rpn(cfg, s)
    _box_head(cfg, s, c4=c4)
    if c4:  # Res5ROIHeads: the mask head reads res5's output, no convs of its own
        cfg.mask_head.pooler_resolution = cfg.box_head.pooler_resolution
    return cfg
