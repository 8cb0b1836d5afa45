"""GluonCV R-CNN ``.params`` files -> our state dict (MXNet is not needed).

Shape shorthand: C classes (no background).

GluonCV's C4 networks name parameters by attribute path (``features.4.0.conv1.weight``:
``features`` = stem + layer1..3, ``top_features.0`` = layer4 as res5); its FPN networks wrap the
ResNet in a ``SymbolBlock`` whose parameters carry MXNet's flat layer names
(``features.resnetv1b_layers2_conv4_weight``: stage 2, the 5th conv counted over the stage).
Batch norms are ``gamma`` / ``beta`` / ``running_mean`` / ``running_var``. The classifier has
background at row 0 and the box regressor 4C rows, as ours; the mask predictor C channels.
The anchors GluonCV stores as parameters (``rpn.anchor_generator*.anchors``) are dropped: ours
are computed (and equal, tests/models/test_gluoncv_fixtures.py).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import numpy as np
from torch import Tensor

from rcnn.data.class_names import COCO_CLASSES
from rcnn.data.voc import VOC_CLASSES
from rcnn.errors import CheckpointError
from rcnn.weights.mxnet_params import read_params
from rcnn.weights.peer import PeerWeights, numbered_names, to_tensors

BN = {
    "gamma": "weight",
    "beta": "bias",
    "running_mean": "running_mean",
    "running_var": "running_var",
}
# GluonCV's C4 networks: `features` children 0 conv1, 1 bn1, (2 relu, 3 max-pool), 4..6 layer1..3
C4_FEATURES = {"4": "layer1", "5": "layer2", "6": "layer3"}
# v1d deep stem: features.0.{0,1,3,4,6} are our conv1.{0,1,3,4,6}
HEAD_MAP = (
    (r"^class_predictor\.", "roi_heads.box_predictor.cls_score."),
    (r"^box_predictor\.", "roi_heads.box_predictor.bbox_pred."),
    (r"^rpn\.(?:rpn_head\.)?conv1\.0\.", "rpn.head.conv.0.0."),
    (r"^rpn\.(?:rpn_head\.)?score\.", "rpn.head.objectness."),
    (r"^rpn\.(?:rpn_head\.)?loc\.", "rpn.head.deltas."),
    (r"^mask\.mask\.", "roi_heads.mask_head.predictor."),
    (r"^mask\.deconv\.(weight|bias)$", r"roi_heads.mask_head.deconv.\1"),
    (r"^features\.P([2-5])_conv_lat_(weight|bias)$", r"FPN.lateral.\1.\2"),
    (r"^features\.P([2-5])_conv1_(weight|bias)$", r"FPN.output.\1.\2"),
    (r"^features\.P6_conv1_(weight|bias)$", r"backbone.fpn.p6.\1"),
)
SYMBOL_NAME = re.compile(
    r"^features\.resnetv1[bd]_(?:(layers|down)(\d)_)?(conv|batchnorm)(\d+)_(\w+)$"
)


def param_name(suffix: str) -> str:
    """Our parameter / buffer name for MXNet's ``weight``, ``gamma``, ``beta``, ..."""
    return BN.get(suffix, suffix)


def _c4_body_key(key: str, *, v1d: bool) -> str | None:
    """Our key for a ``features.*`` / ``top_features.*`` key of a C4 network (None: not one)."""
    parts = key.split(".")
    suffix = param_name(parts[-1])
    if parts[0] == "top_features" and parts[1] == "0":
        return ".".join(["roi_heads.res5", *parts[2:-1], suffix])
    if parts[0] != "features":
        return None
    if parts[1] == "0":  # the stem conv (v1d: a Sequential of convs and norms)
        inner = parts[2:-1]
        return ".".join(["backbone.body.conv1", *inner, suffix])
    if parts[1] == "1":
        return f"backbone.body.bn1.{suffix}"
    if parts[1] in C4_FEATURES:
        return ".".join(["backbone.body", C4_FEATURES[parts[1]], *parts[2:-1], suffix])
    return None


def _symbol_body_key(key: str, *, v1d: bool, convs_per_block: int) -> str | None:
    """Our key for an FPN network's ResNet parameter named by MXNet's symbol (None: not one)."""
    match = SYMBOL_NAME.match(key)
    if match is None:
        return None
    group, stage, kind, index, suffix = match.groups()
    index, suffix = int(index), param_name(suffix)
    if group is None:  # the stem: conv0 (v1d: conv0..2) and batchnorm0 (v1d: batchnorm0..2)
        if not v1d:
            return f"backbone.body.{'conv1' if kind == 'conv' else 'bn1'}.{suffix}"
        if kind == "batchnorm" and index == 2:
            return f"backbone.body.bn1.{suffix}"
        position = 3 * index + (0 if kind == "conv" else 1)
        return f"backbone.body.conv1.{position}.{suffix}"
    layer = f"backbone.body.layer{stage}"
    if group == "down":  # v1d: AvgPool, conv, norm; v1b: conv, norm
        position = (0 if kind == "conv" else 1) + (1 if v1d else 0)
        return f"{layer}.0.downsample.{position}.{suffix}"
    block, within = divmod(index, convs_per_block)
    name = "conv" if kind == "conv" else "bn"
    return f"{layer}.{block}.{name}{within + 1}.{suffix}"


def _head_key(key: str, box_fc: dict[str, str], mask_convs: dict[str, str]) -> str | None:
    for pattern, template in HEAD_MAP:
        if re.match(pattern, key):
            new = re.sub(pattern, template, key)
            if new.startswith("FPN."):
                _, kind, level, param = new.split(".")
                return f"backbone.fpn.{kind}.{int(level) - 2}.0.{param}"
            return new
    match = re.match(r"^(box_features|mask\.deconv)\.(\d+)\.(weight|bias)$", key)
    if match:
        table = box_fc if match.group(1) == "box_features" else mask_convs
        if match.group(2) in table:
            return f"{table[match.group(2)]}.{match.group(3)}"
    return None


def _indexed(keys, prefix: str) -> list[str]:
    """Sorted child indices of ``prefix.<i>.weight`` among ``keys``."""
    found = {k[len(prefix) + 1 :].split(".")[0] for k in keys if k.startswith(prefix + ".")}
    return sorted((i for i in found if i.isdigit()), key=int)


def _layer_tables(keys) -> tuple[dict[str, str], dict[str, str]]:
    """GluonCV's Sequential indices -> our names: box head denses (fc1, fc2) and the FPN mask
    head (3x3 convs, then the deconv last)."""
    box = {i: f"roi_heads.box_head.fc{n + 1}" for n, i in enumerate(_indexed(keys, "box_features"))}
    mask_ids = _indexed(keys, "mask.deconv")
    mask = {i: f"roi_heads.mask_head.convs.{n}.0" for n, i in enumerate(mask_ids[:-1])}
    if mask_ids:
        mask[mask_ids[-1]] = "roi_heads.mask_head.deconv"
    return box, mask


def convert_params(params: Mapping[str, np.ndarray], name: str, source: str = "") -> dict:
    """GluonCV's ``{key: array}`` of zoo network ``name`` -> our state dict (tensors).

    Args:
        params: the ``.params`` contents (``rcnn.weights.mxnet_params.read_params``).
        name: the GluonCV / our zoo name (``fpn`` in it: an FPN network; ``v1d``: ResNet-v1d;
            ``resnet18`` / ``resnet34``: basic blocks).
    """
    v1d, fpn = "v1d" in name, "_fpn_" in name
    convs_per_block = 2 if re.search(r"resnet(18|34)", name) else 3
    box_fc, mask_convs = _layer_tables(params)
    out, unknown = {}, []
    for key, value in params.items():
        if "anchor_generator" in key:
            continue
        if fpn:
            new = _symbol_body_key(key, v1d=v1d, convs_per_block=convs_per_block)
        else:
            new = _c4_body_key(key, v1d=v1d)
        new = new or _head_key(key, box_fc, mask_convs)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise CheckpointError(
            f"{source or name}: GluonCV keys this converter does not know for {name} "
            f"({len(unknown)}): " + ", ".join(sorted(unknown)[:8])
        )
    return to_tensors(out, source or name)


def gluoncv_class_names(name: str, num_classes: int) -> tuple[str, ...]:
    """GluonCV's class names of zoo network ``name``: VOC's 20 / COCO's 80 when the head has
    that many classes, else ``class_1`` .. (a fine-tune whose names the file does not keep)."""
    if name.endswith("_voc") and num_classes == len(VOC_CLASSES):
        return tuple(VOC_CLASSES)
    if name.endswith("_coco") and num_classes == len(COCO_CLASSES):
        return tuple(COCO_CLASSES)
    return numbered_names(num_classes)


def load_gluoncv(name: str, path_or_params, *, classes=None) -> PeerWeights:
    """GluonCV zoo network ``name``'s weights (a ``.params`` file or its dict) in our names.

    Args:
        name: a GluonCV R-CNN name our zoo carries (``rcnn.list_models()``), e.g.
            ``faster_rcnn_resnet50_v1b_voc`` or ``mask_rcnn_fpn_resnet50_v1b_coco``.
        path_or_params: the ``.params`` file (``net.save_parameters``) or ``{key: array}``.
        classes: C names (default ``gluoncv_class_names``; a fine-tune's own names go here).

    Returns:
        ``PeerWeights`` whose ``model`` is None: build it on preset ``name`` (``rcnn.convert``).
    """
    is_path = isinstance(path_or_params, (str, os.PathLike))
    source = os.fspath(path_or_params) if is_path else "<params>"
    params = read_params(path_or_params) if is_path else dict(path_or_params)
    state_dict: dict[str, Tensor] = convert_params(params, name, source)
    rows = state_dict.get("roi_heads.box_predictor.cls_score.weight")
    if rows is None:
        raise CheckpointError(f"{source}: not a GluonCV R-CNN (no class_predictor.weight)")
    num_classes = int(rows.shape[0]) - 1
    names = tuple(classes) if classes is not None else gluoncv_class_names(name, num_classes)
    if len(names) != num_classes:
        raise CheckpointError(f"{source}: {len(names)} class names for {num_classes} classes")
    return PeerWeights(state_dict, names, None, source)
