"""``reset_class``: new class-specific predictors for new classes (GluonCV ``RCNN.reset_class``).

Shape shorthand: C old classes, C' new classes, F box feature width, D mask head channels.

The classifier (background row 0, class c at row c + 1), the box regressor (rows 4c..4c+3) and the
mask predictor (channel c) are replaced by fresh layers sized for C'; the background row is always
copied, and so are the rows of every class named in ``reuse_weights``. The rest of the network is
untouched.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from rcnn.errors import UserError
from rcnn.models.box_head import BoxPredictor

ReuseWeights = Mapping[str | int, str | int] | Sequence[str] | None


def _class_index(key: str | int, names: list[str], which: str) -> int:
    if isinstance(key, str):
        if key not in names:
            raise UserError(f"reset_class: {key!r} is not one of the {which} classes {names}")
        return names.index(key)
    if isinstance(key, int) and not isinstance(key, bool) and 0 <= key < len(names):
        return key
    raise UserError(f"reset_class: {which} class index {key!r} is not in [0, {len(names)})")


def reuse_mapping(old: list[str], new: list[str], reuse_weights: ReuseWeights) -> dict[int, int]:
    """``{new index: old index}`` from GluonCV's ``reuse_weights``.

    Args:
        old: current class names; new: the new class names.
        reuse_weights: None (nothing reused), a dict new -> old (names or indices), or a list of
            names present in both lists.
    """
    if reuse_weights is None:
        return {}
    if isinstance(reuse_weights, Mapping):
        pairs = list(reuse_weights.items())
    elif isinstance(reuse_weights, Sequence) and not isinstance(reuse_weights, str):
        pairs = [(name, name) for name in reuse_weights]
    else:
        raise UserError(
            f"reset_class: reuse_weights must be a dict or a list, got {type(reuse_weights)}"
        )
    return {_class_index(n, new, "new"): _class_index(o, old, "old") for n, o in pairs}


def _copy_rows(dst: Tensor, src: Tensor, mapping: dict[int, int], size: int, offset: int) -> None:
    """``dst[offset + size*n : ...] = src[offset + size*o : ...]`` for each ``n: o``."""
    for new, old in mapping.items():
        dst[offset + size * new : offset + size * (new + 1)] = src[
            offset + size * old : offset + size * (old + 1)
        ]


def _new_box_predictor(old: BoxPredictor, num_classes: int, mapping: dict[int, int]):
    new = BoxPredictor(old.cls_score.in_features, num_classes)
    new = new.to(old.cls_score.weight.device, old.cls_score.weight.dtype)
    for name in ("weight", "bias"):
        new_cls, old_cls = getattr(new.cls_score, name), getattr(old.cls_score, name)
        new_cls[0] = old_cls[0]  # background
        _copy_rows(new_cls, old_cls, mapping, 1, 1)
        _copy_rows(getattr(new.bbox_pred, name), getattr(old.bbox_pred, name), mapping, 4, 0)
    return new


def _new_mask_predictor(old: nn.Conv2d, num_classes: int, mapping: dict[int, int]) -> nn.Conv2d:
    new = nn.Conv2d(old.in_channels, num_classes, 1)
    # the mask head's own init of its predictor (``MaskHead``: normal(std=0.001), zero bias)
    nn.init.normal_(new.weight, std=0.001)
    nn.init.zeros_(new.bias)
    new = new.to(old.weight.device, old.weight.dtype)
    _copy_rows(new.weight, old.weight, mapping, 1, 0)
    _copy_rows(new.bias, old.bias, mapping, 1, 0)
    return new


def _new_maskiou_predictor(old: nn.Linear, num_classes: int, mapping: dict[int, int]):
    new = nn.Linear(old.in_features, num_classes)
    # the MaskIoU head's own init of its predictor (normal(std=0.01), zero bias)
    nn.init.normal_(new.weight, std=0.01)
    nn.init.zeros_(new.bias)
    new = new.to(old.weight.device, old.weight.dtype)
    _copy_rows(new.weight, old.weight, mapping, 1, 0)
    _copy_rows(new.bias, old.bias, mapping, 1, 0)
    return new


@torch.no_grad()
def reset_class(model: nn.Module, classes: Sequence[str], reuse_weights: ReuseWeights = None):
    """Resize ``model``'s class predictors to ``classes`` in place (see the module docstring).

    Args:
        model: an ``RCNN``.
        classes: C' new class names (unique, at least one).
        reuse_weights: dict new -> old (names or indices) or list of names kept.
    """
    classes = [str(c) for c in classes]
    if not classes or len(set(classes)) != len(classes):
        raise UserError(f"reset_class: classes must be unique and non-empty, got {classes}")
    mapping = reuse_mapping(list(model.class_names), classes, reuse_weights)
    heads = model.roi_heads
    heads.box_predictor = _new_box_predictor(heads.box_predictor, len(classes), mapping)
    if heads.mask_head is not None:
        predictor = _new_mask_predictor(heads.mask_head.predictor, len(classes), mapping)
        heads.mask_head.predictor = predictor
    if getattr(heads, "maskiou_head", None) is not None:
        heads.maskiou_head.predictor = _new_maskiou_predictor(
            heads.maskiou_head.predictor, len(classes), mapping
        )
    model.cfg.classes = tuple(classes)
    model.cfg.category_ids = ()  # the old dataset's ids no longer apply
    model.class_names = list(classes)
    model.num_classes = len(classes)
    model.label_to_category_id = None
    return model


def pretrained_classes(source, state_dict: Mapping[str, Tensor], default: Sequence[str]):
    """Class names a weight file was trained with.

    The ``class_names`` a checkpoint of ours stores; otherwise ``default`` when the classifier has
    ``len(default) + 1`` rows, else ``class_1 .. class_C``.
    """
    names = None
    if isinstance(source, Mapping):
        names = source.get("class_names")
    elif isinstance(source, (str, os.PathLike)) and os.path.isfile(source):
        raw = torch.load(source, map_location="cpu", weights_only=True)
        names = raw.get("class_names") if isinstance(raw, Mapping) else None
    if names:
        return tuple(str(n) for n in names)
    key = "roi_heads.box_predictor.cls_score.weight"
    if key not in state_dict:
        raise UserError(f"{source}: not a detector's weights (no {key!r})")
    count = int(state_dict[key].shape[0]) - 1
    if count == len(default):
        return tuple(default)
    return tuple(f"class_{i + 1}" for i in range(count))
