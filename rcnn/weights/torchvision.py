"""torchvision detection checkpoints -> our state dicts and model-config changes.

Shape shorthand: C classes (ours, no background); torchvision's heads have C + 1 (background 0).

torchvision's classifier already has background at column 0 (as ours); its box regressor and mask
predictor also have a background slot (rows 0-3, channel 0), which ours do not: they are dropped.
Labels: ours = torchvision's - 1.

torchvision's published ``COCO_V1`` files (``weights="COCO_V1"`` fetches them into the torch hub
cache) are recognised by file name: their 90 classes get torchvision's COCO names, and those of the
v1 builders the frozen-BN epsilon 0 they were trained and are evaluated with. Nothing is downloaded.
``rcnn.zoo.load_torchvision`` builds our model from such a file.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torchvision.models import get_model_weights

from rcnn.errors import CheckpointError

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


V1_BUILDERS = ("fasterrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn")
COCO_LABELS = 90  # torchvision's COCO heads: labels 1..90 are COCO category ids, 10 of them unused

log = logging.getLogger(__name__)


def published_weights(name: str):
    """torchvision's ``COCO_V1`` weights entry of builder ``name`` (URL, metadata); no download."""
    return get_model_weights(name)["COCO_V1"]


def published_file(name: str) -> str:
    """Where torchvision keeps builder ``name``'s ``COCO_V1`` file once downloaded: the torch hub
    cache, ``torch.hub.get_dir()/checkpoints/<file>`` (``$TORCH_HOME`` moves it)."""
    url = published_weights(name).url
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))


def published_norm_eps(source) -> float | None:
    """0.0 when ``source`` is, by file name, torchvision's ``COCO_V1`` file of a v1 builder (those
    were trained with frozen-BN epsilon 0: torchvision calls ``overwrite_eps(model, 0.0)``); else
    None (a state dict in memory, or any other file: the preset's 1e-5)."""
    if not isinstance(source, (str, os.PathLike)):
        return None
    base = os.path.basename(os.fspath(source))
    return 0.0 if base in {os.path.basename(published_file(n)) for n in V1_BUILDERS} else None


def coco_label_names() -> tuple[str, ...]:
    """torchvision's names of its COCO labels 1..90 (the COCO json's category names); the ten
    category ids COCO does not use are named ``N/A <id>`` so that every name is unique."""
    categories = published_weights("maskrcnn_resnet50_fpn").meta["categories"]
    names = [name if name != "N/A" else f"N/A {i}" for i, name in enumerate(categories)]
    return tuple(names[1:])


def default_class_names(num_classes: int) -> tuple[str, ...]:
    """Names for a torchvision head of ``num_classes`` (C, no background): torchvision's COCO
    names for its 90-label COCO layout, else ``class_1 .. class_C``."""
    if num_classes == COCO_LABELS:
        return coco_label_names()
    return tuple(f"class_{i + 1}" for i in range(num_classes))


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


def is_torchvision_state_dict(state_dict: Mapping[str, Tensor]) -> bool:
    """True for a state dict in torchvision's naming (its RPN head's ``cls_logits``)."""
    return "rpn.head.cls_logits.weight" in state_dict


def config_changes(
    state_dict: Mapping[str, Tensor],
    source,
    *,
    classes: list[str] | None = None,
    norm_eps: float | None = None,
) -> dict[str, Any]:
    """The model-config changes (dotted keys) that torchvision's ``state_dict`` implies.

    Args:
        state_dict: torchvision's ``model.state_dict()`` (its naming).
        source: where it came from: a file path (recognised by name, ``published_norm_eps``) or
            anything else (a state dict in memory).
        classes: C class names (default ``default_class_names``: torchvision's COCO names for
            its 90-label heads, else ``class_1`` .. ``class_C``).
        norm_eps: frozen-BN epsilon. Default: 0.0 for torchvision's published ``COCO_V1`` file
            of a v1 builder, else no change (the preset's 1e-5). Pass 0.0 for a state dict taken
            from such a model in memory.

    Returns:
        ``{"classes": (...)}`` and, where it changes, ``{"backbone.norm_eps": eps}``.

    Raises:
        CheckpointError: not torchvision's detector, or class names that do not fit its head.
    """
    num_classes = num_classes_of(state_dict)
    names = tuple(classes) if classes else default_class_names(num_classes)
    if len(names) != num_classes:
        raise CheckpointError(f"{source}: {len(names)} class names for {num_classes} classes")
    changes: dict[str, Any] = {"classes": names}
    if norm_eps is None:
        norm_eps = published_norm_eps(source)
        if norm_eps is not None:
            log.info("%s: torchvision's published v1 weights: frozen-BN eps %g", source, norm_eps)
    if norm_eps is not None:
        changes["backbone.norm_eps"] = norm_eps
    return changes
