"""Model names -> preset configs and training recipes; ``get_model`` / ``list_models``; our
model from a file of ours or a peer's (``get_model(pretrained=FILE)``, ``load_torchvision``).

torchvision names reproduce torchvision's builders' defaults (``torchvision/models/detection``);
GluonCV names reproduce GluonCV's model zoo (``gluoncv/model_zoo/model_zoo.py`` and the
``scripts/{detection,instance}`` training scripts). Shape shorthand: C classes.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from rcnn.config import apply_dict, nest_dotted
from rcnn.data.class_names import COCO_CLASSES
from rcnn.data.voc import VOC_CLASSES
from rcnn.errors import CheckpointError, UserError
from rcnn.models.build import build_model
from rcnn.models.config import DEFAULT_BOX_CLIP, ModelConfig
from rcnn.models.rcnn import RCNN
from rcnn.models.reset_class import pretrained_classes
from rcnn.models.shapes_preset import SHAPES_RECIPE, shapes_model
from rcnn.weights import load_state_dict_checked, read_state_dict
from rcnn.weights import torchvision as tv

logger = logging.getLogger(__name__)


# references/detection/README.md: 8 GPUs x 2 images, --epochs 26 --lr-steps 16 22, warmup
# min(1000, iters per epoch) from 1/1000 (engine.py). (The v2 weights were published with a longer
# LSJ recipe; this is the reference recipe the builders document.)
TORCHVISION_RECIPE = {
    "epochs": 26,
    "lr": 0.02,
    "lr_decay": 0.1,
    "lr_decay_epoch": (16, 22),
    "lr_warmup": 1000,
    "lr_warmup_factor": 0.001,
    "wd": 1e-4,
    "momentum": 0.9,
    "batch_size": 16,
}
# scripts/instance/mask_rcnn/train_mask_rcnn.py (COCO): lr 0.00125 x batch, 26 epochs, steps 17/23,
# warmup max(8000 / batch, 1000) iterations from 1/3.
GLUONCV_COCO_RECIPE = {
    "epochs": 26,
    "lr": 0.01,
    "lr_decay": 0.1,
    "lr_decay_epoch": (17, 23),
    "lr_warmup": 1000,
    "lr_warmup_factor": 1.0 / 3,
    "wd": 1e-4,
    "momentum": 0.9,
    "batch_size": 8,
}


# scripts/detection/faster_rcnn/train_faster_rcnn.py, derived defaults (features.md 1.1):
# --batch-size 1; VOC: 20 epochs, lr 0.001, steps 14/20, no warmup, wd 5e-4; COCO: 26 epochs,
# lr 0.00125, steps 17/23, 1000 warmup iterations from 1/3, wd 1e-4.
GLUONCV_FASTER_VOC_RECIPE = {
    "epochs": 20,
    "lr": 0.001,
    "lr_decay": 0.1,
    "lr_decay_epoch": (14, 20),
    "lr_warmup": 0,
    "lr_warmup_factor": 1.0 / 3,
    "wd": 5e-4,
    "momentum": 0.9,
    "batch_size": 1,
}
GLUONCV_FASTER_COCO_RECIPE = {
    "epochs": 26,
    "lr": 0.00125,
    "lr_decay": 0.1,
    "lr_decay_epoch": (17, 23),
    "lr_warmup": 1000,
    "lr_warmup_factor": 1.0 / 3,
    "wd": 1e-4,
    "momentum": 0.9,
    "batch_size": 1,
}


@dataclass
class Preset:
    """A named model config with its published training recipe (``TrainConfig`` field names)."""

    name: str
    model: ModelConfig
    recipe: dict = field(default_factory=dict)


def _torchvision(*, v2: bool, mask: bool) -> ModelConfig:
    """torchvision's builder defaults (ModelConfig's own defaults are torchvision v1's)."""
    cfg = ModelConfig(classes=COCO_CLASSES, mask_on=mask)
    if v2:  # faster_rcnn.py / mask_rcnn.py *_v2: BN body and FPN, 2-conv RPN, 4conv1fc + BN heads
        cfg.backbone.norm = "bn"
        cfg.fpn.norm = "bn"
        cfg.rpn.conv_depth = 2
        cfg.box_head.kind = "4conv1fc"
        cfg.box_head.norm = "bn"
        cfg.mask_head.norm = "bn"
    return cfg


def _gluoncv_fpn(backbone: str, *, mask: bool) -> ModelConfig:
    """GluonCV's FPN models (model_zoo.py; features.md section 1.5)."""
    cfg = ModelConfig(classes=COCO_CLASSES, mask_on=mask)
    cfg.backbone.name = backbone
    cfg.fpn.p6 = "conv"  # FPNFeatureExpander(use_p6=True): p6_conv defaults to True
    cfg.input.train_rounding = "round"  # resize_short_within rounds the resized sides
    cfg.anchors.style = "gluoncv"  # base 16, scales (2,4,8,16,32) -> 32..512 px, ratios (.5,1,2)
    rpn = cfg.rpn
    rpn.channels = 1024
    rpn.pre_nms_topk, rpn.post_nms_topk = (12000, 6000), (2000, 1000)
    rpn.per_level = False  # GluonCV ranks and suppresses proposals over all levels jointly
    # RPNProposal drops x2 - x1 + 1 < rpn_min_size (1): with our widths, x2 - x1 < 0: none
    rpn.min_size = 0.0
    rpn.allowed_border = 0.0  # RPNTargetGenerator ignores anchors crossing the image border
    rpn.negatives_last = True  # RPNTargetSampler: small objects get no positive anchor
    rpn.box_clip = 4.42 if mask else 4.14
    box = cfg.box_head
    box.box_clip = rpn.box_clip
    box.smooth_l1_beta = 1.0  # --rcnn-smoothl1-rho 1.0
    box.score_thresh = 0.01  # MultiPerClassDecoder's default thresh
    box.level_rule = "gluoncv"  # _pyramid_roi_feats: inclusive sizes (w + 1)(h + 1)
    box.clip_boxes = False  # the R-CNN decodes boxes without clipping them to the image
    box.min_size = 0.0  # nor drops any by size: a proposal flat on the image edge stays flat
    # deviation from gluoncv: at most 100 detections (rcnn_max_dets 1000 / post_nms -1 there):
    # COCO AP counts the top 100 per image, and 1000 full-resolution masks take ~1 GB per image
    box.detections_per_img = 100
    if mask and backbone != "resnet18":
        box.pooler_resolution, box.pool_downsample = 14, 2  # RoI 14, box head avg-pools to 7
    if mask and backbone == "resnet18":
        cfg.mask_head.pooler_resolution, cfg.mask_head.num_conv = 7, 2  # 14x14 masks
    return cfg


def _v1d(cfg: ModelConfig) -> ModelConfig:
    """GluonCV's ResNet-v1d body (deep stem, avg-pool shortcuts; ``rcnn/models/stems.py``)."""
    cfg.backbone.stem = "v1d"
    return cfg


def _gluoncv_c4(backbone: str, *, mask: bool, voc: bool = False) -> ModelConfig:
    """GluonCV's C4 models (``FasterRCNN`` / ``MaskRCNN`` defaults + model_zoo.py; features.md
    sections 1.4-1.5): RPN and RoIAlign 14x14 on res4, res5 + global average pooling as box head.

    Args:
        backbone: ``resnet18_v1b`` / ``resnet50_v1b`` (torchvision's ResNet) or ``resnet101_v1d``.
    """
    cfg = ModelConfig(arch="c4", classes=COCO_CLASSES, mask_on=mask)
    cfg.backbone.name, _, variant = backbone.partition("_")
    cfg.backbone.stem = "v1d" if variant == "v1d" else "torchvision"
    short, cfg.input.max_size = (600, 1000) if voc else (800, 1333)
    cfg.input.train_short, cfg.input.test_short = (short,), short
    cfg.input.train_rounding = "round"  # resize_short_within rounds the resized sides
    cfg.anchors.style = "gluoncv"  # base 16, scales (2..32), ratios (.5,1,2): 15 per location
    rpn = cfg.rpn
    rpn.channels = 1024
    rpn.pre_nms_topk, rpn.post_nms_topk = (12000, 6000), (2000, 300 if voc else 1000)
    # RPNProposal drops x2 - x1 + 1 < rpn_min_size (16 VOC, 1 COCO): inclusive pixel widths, so
    # with our widths (x2 - x1) the same test is width < min_size - 1.
    # deviation from gluoncv: it drops them before its pre-NMS top-k (score -1), we after, so our
    # top-k may hold fewer valid boxes; measured on 10 raccoon images at 600 px with seeded
    # weights (benchmarks/gluoncv_min_size_order.py): 2 of 3000 proposals, 0 of 1000 detections
    rpn.min_size = 15.0 if voc else 0.0
    rpn.allowed_border = 0.0  # RPNTargetGenerator ignores anchors crossing the image border
    rpn.negatives_last = True  # RPNTargetSampler: small objects get no positive anchor
    # deviation from gluoncv: the VOC models decode without a clip (clip=None); we keep
    # log(1000/16) so that exp() cannot overflow
    rpn.box_clip = DEFAULT_BOX_CLIP if voc else (4.42 if mask else 4.14)
    box = cfg.box_head
    box.kind, box.pooler_resolution, box.sampling_ratio = "res5", 14, 2
    box.batch_size_per_image = 256 if cfg.backbone.name == "resnet18" else 128
    box.box_clip = rpn.box_clip
    box.smooth_l1_beta = 1.0  # --rcnn-smoothl1-rho 1.0
    box.score_thresh = 0.01  # MultiPerClassDecoder's default thresh
    box.nms_thresh, box.nms_topk = (0.3, 400) if voc else (0.5, -1)
    box.clip_boxes = False  # the R-CNN decodes boxes without clipping them to the image
    box.min_size = 0.0  # nor drops any by size: a proposal flat on the image edge stays flat
    box.detections_per_img = 100  # gluoncv: post_nms 100 (VOC); COCO: see _gluoncv_fpn
    if mask:  # Mask(num_fcn_convs=0, mask_channels=256): deconv on res5's 7x7 -> 14x14 masks
        cfg.mask_head.num_conv, cfg.mask_head.conv_dim = 0, 256
        cfg.mask_head.pooler_resolution = 14
    return cfg


PRESETS: dict[str, tuple[Callable[[], ModelConfig], dict]] = {
    "fasterrcnn_resnet50_fpn": (lambda: _torchvision(v2=False, mask=False), TORCHVISION_RECIPE),
    "fasterrcnn_resnet50_fpn_v2": (lambda: _torchvision(v2=True, mask=False), TORCHVISION_RECIPE),
    "maskrcnn_resnet50_fpn": (lambda: _torchvision(v2=False, mask=True), TORCHVISION_RECIPE),
    "maskrcnn_resnet50_fpn_v2": (lambda: _torchvision(v2=True, mask=True), TORCHVISION_RECIPE),
    "faster_rcnn_fpn_resnet50_v1b_coco": (
        lambda: _gluoncv_fpn("resnet50", mask=False),
        GLUONCV_COCO_RECIPE,
    ),
    "mask_rcnn_fpn_resnet18_v1b_coco": (
        lambda: _gluoncv_fpn("resnet18", mask=True),
        GLUONCV_COCO_RECIPE,
    ),
    "mask_rcnn_fpn_resnet50_v1b_coco": (
        lambda: _gluoncv_fpn("resnet50", mask=True),
        GLUONCV_COCO_RECIPE,
    ),
    "faster_rcnn_fpn_resnet101_v1d_coco": (
        lambda: _v1d(_gluoncv_fpn("resnet101", mask=False)),
        GLUONCV_COCO_RECIPE,
    ),
    "mask_rcnn_fpn_resnet101_v1d_coco": (
        lambda: _v1d(_gluoncv_fpn("resnet101", mask=True)),
        GLUONCV_COCO_RECIPE,
    ),
    "faster_rcnn_resnet50_v1b_voc": (
        lambda: _gluoncv_c4("resnet50_v1b", mask=False, voc=True),
        GLUONCV_FASTER_VOC_RECIPE,
    ),
    "faster_rcnn_resnet101_v1d_voc": (
        lambda: _gluoncv_c4("resnet101_v1d", mask=False, voc=True),
        GLUONCV_FASTER_VOC_RECIPE,
    ),
    "faster_rcnn_resnet50_v1b_coco": (
        lambda: _gluoncv_c4("resnet50_v1b", mask=False),
        GLUONCV_FASTER_COCO_RECIPE,
    ),
    "faster_rcnn_resnet101_v1d_coco": (
        lambda: _gluoncv_c4("resnet101_v1d", mask=False),
        GLUONCV_FASTER_COCO_RECIPE,
    ),
    "mask_rcnn_resnet18_v1b_coco": (
        lambda: _gluoncv_c4("resnet18_v1b", mask=True),
        GLUONCV_COCO_RECIPE,
    ),
    "mask_rcnn_resnet50_v1b_coco": (
        lambda: _gluoncv_c4("resnet50_v1b", mask=True),
        GLUONCV_COCO_RECIPE,
    ),
    "mask_rcnn_resnet101_v1d_coco": (
        lambda: _gluoncv_c4("resnet101_v1d", mask=True),
        GLUONCV_COCO_RECIPE,
    ),
    "mask_rcnn_shapes": (shapes_model, SHAPES_RECIPE),  # rcnn/models/shapes_preset.py
}


def list_models() -> list[str]:
    """Names accepted by ``get_preset`` / ``get_model``."""
    return sorted(PRESETS)


def get_preset(name: str) -> Preset:
    """A fresh (mutable) copy of preset ``name``."""
    if name not in PRESETS:
        raise UserError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    make_cfg, recipe = PRESETS[name]
    return Preset(name, make_cfg(), copy.deepcopy(recipe))


def default_classes(name: str, cfg: ModelConfig) -> tuple[str, ...]:
    """COCO's 80 names for ``*_coco`` and torchvision presets, VOC's 20 for ``*_voc``."""
    if name.endswith("_voc"):
        return tuple(VOC_CLASSES)
    return tuple(cfg.classes)


def torchvision_hub_file(name: str) -> str:
    """torchvision's ``COCO_V1`` file of preset ``name`` in the torch hub cache, or a UserError."""
    if name not in tv.BUILDERS:
        raise UserError(
            f"{name}: rcnn ships no weights and never downloads; only torchvision's builders "
            f"{tv.BUILDERS} have published weights it finds in the torch hub cache. Pass a local "
            "file (a state dict or checkpoint you downloaded yourself)"
        )
    path = tv.published_file(name)
    if not os.path.isfile(path):
        raise UserError(
            f"{name}: torchvision's COCO weights are not at {path} and nothing is downloaded: "
            f"fetch {tv.published_weights(name).url} there (or run torchvision's "
            f'{name}(weights="COCO_V1") once), or give the path of a local copy'
        )
    return path


def peer_config_changes(state_dict: dict[str, Tensor], source) -> dict[str, Any]:
    """Model-config changes (dotted keys) that a weight file in a peer's naming implies; {} for
    ours. The one place that recognises peers' files (``rcnn.weights`` converters)."""
    if tv.is_torchvision_state_dict(state_dict):
        return tv.config_changes(state_dict, source)
    return {}


def build_with_weights(cfg: ModelConfig, state_dict: dict[str, Tensor], source) -> RCNN:
    """Our model for ``cfg`` carrying ``state_dict`` (ours or a peer's naming, converted here).

    Raises:
        CheckpointError: missing / unexpected keys or wrong shapes, all listed.
    """
    cfg.backbone.pretrained_base = False
    model = build_model(cfg)
    if tv.is_torchvision_state_dict(state_dict):
        state_dict = tv.convert_state_dict(state_dict, set(model.state_dict()))
    load_state_dict_checked(model, state_dict, source=source)
    return model


def load_torchvision(
    name: str,
    state_dict_or_path,
    *,
    classes: list[str] | None = None,
    norm_eps: float | None = None,
) -> RCNN:
    """Our model for torchvision builder ``name`` carrying the given torchvision weights.

    Args:
        name: one of ``rcnn.weights.torchvision.BUILDERS``.
        state_dict_or_path: torchvision's ``model.state_dict()`` or a file holding it.
        classes, norm_eps: see ``rcnn.weights.torchvision.config_changes`` (default: the file's
            class count with torchvision's COCO names for 90; epsilon 0 for its published v1
            files).

    Raises:
        CheckpointError: an unknown builder; missing / unexpected keys or wrong shapes, all listed.
    """
    if name not in tv.BUILDERS:
        raise CheckpointError(
            f"unknown torchvision builder {name!r}; expected one of {tv.BUILDERS}"
        )
    source = state_dict_or_path if isinstance(state_dict_or_path, str) else name
    state_dict = read_state_dict(state_dict_or_path)
    changes = tv.config_changes(state_dict, state_dict_or_path, classes=classes, norm_eps=norm_eps)
    cfg = get_preset(name).model
    apply_dict(cfg, nest_dotted(changes), prefix="model.")
    return build_with_weights(cfg, state_dict, source)


def get_model(
    name: str,
    *,
    pretrained=None,
    pretrained_base: bool = True,
    classes=None,
    overrides: dict[str, Any] | None = None,
) -> RCNN:
    """Build model ``name`` (an ``RCNN``), optionally loading full weights from a local file.

    Args:
        name: a preset (``list_models()``).
        pretrained: None/False, or a local state-dict / checkpoint file (ours or torchvision's).
            URLs are refused: nothing is downloaded. ``True`` for a torchvision name
            (``fasterrcnn_resnet50_fpn`` ...): torchvision's ``COCO_V1`` file from the torch hub
            cache, where ``weights="COCO_V1"`` in torchvision puts it (``published_file``).
            torchvision's files get its 90 COCO label names and, for the v1 builders' published
            files, frozen-BN epsilon 0: the detections torchvision gives with them.
        pretrained_base: ImageNet initialisation of the body (a local file; otherwise a warning).
        classes: class names (default: the preset's dataset classes).
        overrides: model config values to change, by dotted key (``{"backbone.name": "resnet18",
            "input.test_short": 600}``) or nested dicts, checked as ``rcnn train --set model.*``.
    """
    cfg = get_preset(name).model
    overridden = nest_dotted(overrides or {})
    apply_dict(cfg, overridden, prefix="model.")
    preset_classes = default_classes(name, cfg)
    cfg.classes = tuple(classes) if classes is not None else preset_classes
    if pretrained is True:
        pretrained = torchvision_hub_file(name)
    if not pretrained:
        cfg.backbone.pretrained_base = bool(pretrained_base)
        return build_model(cfg)
    # build with the file's classes, then keep those whose names carry over
    state_dict = read_state_dict(pretrained)
    changes = peer_config_changes(state_dict, pretrained)
    if "norm_eps" in overridden.get("backbone", {}):  # the caller's epsilon wins
        changes.pop("backbone.norm_eps", None)
    peer_classes = changes.pop("classes", None)
    if peer_classes is not None and len(peer_classes) == tv.COCO_LABELS:
        preset_classes = peer_classes
    apply_dict(cfg, nest_dotted(changes), prefix="model.")
    trained = pretrained_classes(pretrained, state_dict, preset_classes)
    wanted, cfg.classes = (cfg.classes if classes is not None else trained), trained
    model = build_with_weights(cfg, state_dict, os.fspath(pretrained))
    if list(wanted) != model.class_names:
        model.reset_class(wanted, reuse_weights=[c for c in wanted if c in trained])
    return model
