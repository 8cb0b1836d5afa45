"""torchvision detection checkpoints -> our models.

Shape shorthand: C classes (ours, no background); torchvision's heads have C + 1 (background 0).

torchvision's classifier already has background at column 0 (as ours); its box regressor and mask
predictor also have a background slot (rows 0-3, channel 0), which ours do not: they are dropped.
Labels: ours = torchvision's - 1.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor

from rcnn.errors import CheckpointError
from rcnn.weights import load_state_dict_checked, read_state_dict

BUILDERS = (
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "maskrcnn_resnet50_fpn",
    "maskrcnn_resnet50_fpn_v2",
)

# (torchvision key pattern, our key template), first match wins
KEY_MAP = (
    (r"^backbone\.fpn\.inner_blocks\.(\d+)\.(\d+)\.", r"backbone.fpn.lateral.\1.\2."),
    (r"^backbone\.fpn\.layer_blocks\.(\d+)\.(\d+)\.", r"backbone.fpn.output.\1.\2."),
    (r"^rpn\.head\.cls_logits\.", "rpn.head.objectness."),
    (r"^rpn\.head\.bbox_pred\.", "rpn.head.deltas."),
    (r"^roi_heads\.box_head\.fc6\.", "roi_heads.box_head.fc1."),
    (r"^roi_heads\.box_head\.fc7\.", "roi_heads.box_head.fc2."),
    (r"^roi_heads\.box_head\.([0-3])\.(\d+)\.", r"roi_heads.box_head.convs.\1.\2."),
    (r"^roi_heads\.box_head\.5\.", "roi_heads.box_head.fc1."),
    (r"^roi_heads\.mask_head\.(\d+)\.(\d+)\.", r"roi_heads.mask_head.convs.\1.\2."),
    (r"^roi_heads\.mask_predictor\.conv5_mask\.", "roi_heads.mask_head.deconv."),
    (r"^roi_heads\.mask_predictor\.mask_fcn_logits\.", "roi_heads.mask_head.predictor."),
)


def convert_key(key: str) -> str:
    """Our name for torchvision's state-dict ``key`` (unchanged where the names agree)."""
    for pattern, template in KEY_MAP:
        if re.match(pattern, key):
            return re.sub(pattern, template, key)
    return key


def convert_state_dict(state_dict: Mapping[str, Tensor], own_keys: set[str]) -> dict[str, Tensor]:
    """Rename keys and drop torchvision's background slots of the box regressor / mask predictor.

    ``num_batches_tracked`` buffers are dropped where our norm (frozen BN) has none.
    """
    out = {}
    for key, value in state_dict.items():
        new_key = convert_key(key)
        if new_key.endswith("num_batches_tracked") and new_key not in own_keys:
            continue
        if new_key.startswith("roi_heads.box_predictor.bbox_pred."):
            value = value[4:]
        elif new_key.startswith("roi_heads.mask_head.predictor."):
            value = value[1:]
        out[new_key] = value
    return out


def num_classes_of(state_dict: Mapping[str, Tensor]) -> int:
    """C (without background) read from torchvision's classifier."""
    key = "roi_heads.box_predictor.cls_score.weight"
    if key not in state_dict:
        raise CheckpointError(f"not a torchvision Faster/Mask R-CNN state dict: no {key!r}")
    return int(state_dict[key].shape[0]) - 1


def load_torchvision(
    name: str,
    state_dict_or_path,
    *,
    classes: list[str] | None = None,
    norm_eps: float | None = None,
):
    """Our model for torchvision builder ``name`` carrying the given torchvision weights.

    Args:
        name: one of ``BUILDERS``.
        state_dict_or_path: torchvision's ``model.state_dict()`` or a file holding it.
        classes: C class names (default ``class_1`` .. ``class_C``).
        norm_eps: frozen-BN epsilon; torchvision's own COCO_V1 weights of the v1 builders were
            trained with 0.0 (torchvision calls ``overwrite_eps(model, 0.0)``); others 1e-5.

    Raises:
        CheckpointError: missing / unexpected keys or wrong shapes, all listed.
    """
    from rcnn.models.build import build_model
    from rcnn.zoo import get_preset

    if name not in BUILDERS:
        raise CheckpointError(f"unknown torchvision builder {name!r}; expected one of {BUILDERS}")
    source = state_dict_or_path if isinstance(state_dict_or_path, str) else name
    state_dict = read_state_dict(state_dict_or_path)
    num_classes = num_classes_of(state_dict)
    cfg = get_preset(name).model
    cfg.classes = tuple(classes) if classes else tuple(f"class_{i + 1}" for i in range(num_classes))
    if len(cfg.classes) != num_classes:
        raise CheckpointError(f"{source}: {len(cfg.classes)} class names for {num_classes} classes")
    cfg.backbone.pretrained_base = False
    if norm_eps is not None:
        cfg.backbone.norm_eps = norm_eps
    model = build_model(cfg)
    own_keys = set(model.state_dict())
    load_state_dict_checked(model, convert_state_dict(state_dict, own_keys), source=source)
    return model
