"""Detectron2 model-zoo weights (``.pkl`` / ``.pth``) -> our state dict and model config.

Shape shorthand: C classes (no background), D feature channels.

Detectron2's classifier puts background in its LAST column (ours: column 0); its box regressor
([4C, D]) and mask predictor ([C, D]) have no background slot, as ours. The settings its weights
were trained with (BGR input in 0-255 with MSRA's mean and std 1, stride in the bottleneck's 1x1
conv, unrounded anchors, ``ROIAlignV2`` = aligned RoIAlign with adaptive sampling, ...) come from
its config (``rcnn.weights.detectron2_config``) into our ``ModelConfig``.

A ``.pkl`` is read with a restricted unpickler that builds numpy arrays and plain containers and
nothing else (no code in the file runs); a ``.pth`` with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Mapping

import torch
from torch import Tensor

from rcnn.errors import CheckpointError
from rcnn.weights.detectron2_config import detectron2_config
from rcnn.weights.peer import PeerWeights, numbered_names, to_tensors

# the only globals a Detectron2 .pkl needs: numpy array / dtype / scalar reconstruction
SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # bytes in protocol-2 pickles
}

# (Detectron2 key pattern, our key template), first match wins; ``{body}`` is ``backbone.body``
KEY_MAP = (
    (r"^backbone\.(?:bottom_up\.)?stem\.conv1\.norm\.", "backbone.body.bn1."),
    (r"^backbone\.(?:bottom_up\.)?stem\.conv1\.", "backbone.body.conv1."),
    (r"^backbone\.(?:bottom_up\.)?res([2-5])\.(\d+)\.shortcut\.norm\.", r"RES\1.\2.downsample.1."),
    (r"^backbone\.(?:bottom_up\.)?res([2-5])\.(\d+)\.shortcut\.", r"RES\1.\2.downsample.0."),
    (r"^backbone\.(?:bottom_up\.)?res([2-5])\.(\d+)\.conv(\d)\.norm\.", r"RES\1.\2.bn\3."),
    (r"^backbone\.(?:bottom_up\.)?res([2-5])\.(\d+)\.conv(\d)\.", r"RES\1.\2.conv\3."),
    (r"^roi_heads\.res5\.(\d+)\.shortcut\.norm\.", r"roi_heads.res5.\1.downsample.1."),
    (r"^roi_heads\.res5\.(\d+)\.shortcut\.", r"roi_heads.res5.\1.downsample.0."),
    (r"^roi_heads\.res5\.(\d+)\.conv(\d)\.norm\.", r"roi_heads.res5.\1.bn\2."),
    (r"^roi_heads\.res5\.(\d+)\.conv(\d)\.", r"roi_heads.res5.\1.conv\2."),
    (r"^backbone\.fpn_lateral([2-5])\.", r"FPN.lateral.\1."),
    (r"^backbone\.fpn_output([2-5])\.", r"FPN.output.\1."),
    (r"^proposal_generator\.rpn_head\.conv\.", "rpn.head.conv.0.0."),
    (r"^proposal_generator\.rpn_head\.objectness_logits\.", "rpn.head.objectness."),
    (r"^proposal_generator\.rpn_head\.anchor_deltas\.", "rpn.head.deltas."),
    (r"^roi_heads\.box_head\.fc([12])\.", r"roi_heads.box_head.fc\1."),
    (r"^roi_heads\.box_predictor\.", "roi_heads.box_predictor."),
    (r"^roi_heads\.mask_head\.mask_fcn(\d)\.", r"MASKFCN.\1."),
    (r"^roi_heads\.mask_head\.(deconv|predictor)\.", r"roi_heads.mask_head.\1."),
)


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in SAFE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a weight file")


def read_detectron2_file(path: str | os.PathLike) -> dict[str, object]:
    """The ``model`` dict of a Detectron2 ``.pkl`` (numpy arrays) or ``.pth`` (tensors)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such weight file")
    if zipfile.is_zipfile(path):  # torch.save's format: a .pth checkpoint
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"{path}: cannot read as a Detectron2 .pth ({exc})") from None
    else:
        try:
            with open(path, "rb") as handle:
                data = _ArrayUnpickler(handle, encoding="latin1").load()
        except Exception as exc:  # unpickling raises many types; each means "not such a file"
            raise CheckpointError(f"{path}: cannot read as a Detectron2 .pkl ({exc})") from None
    if isinstance(data, Mapping) and isinstance(data.get("model"), Mapping):
        data = data["model"]
    if not isinstance(data, Mapping) or not data:
        raise CheckpointError(f"{path}: no Detectron2 model weights (expected a 'model' dict)")
    return dict(data)


def is_detectron2_state(keys) -> bool:
    """True when the keys are Detectron2's (``proposal_generator.rpn_head.*``)."""
    return any(str(k).startswith("proposal_generator.rpn_head.") for k in keys)


def convert_key(key: str) -> str | None:
    """Our key for Detectron2's ``key`` (None: not part of our model, e.g. ``pixel_mean``)."""
    for pattern, template in KEY_MAP:
        if re.match(pattern, key):
            new = re.sub(pattern, template, key)
            break
    else:
        return None
    head, _, rest = new.partition(".")
    if head.startswith("RES"):  # Detectron2's res2..res5 are torchvision's layer1..layer4
        stage, rest = int(head[3:]), rest
        return f"backbone.body.layer{stage - 1}.{rest}"
    if head == "FPN":  # fpn_lateral2..5 -> lateral.0..3
        kind, level, param = rest.split(".", 2)
        return f"backbone.fpn.{kind}.{int(level) - 2}.0.{param}"
    if head == "MASKFCN":  # mask_fcn1..4 -> convs.0..3
        index, param = rest.split(".", 1)
        return f"roi_heads.mask_head.convs.{int(index) - 1}.0.{param}"
    return new


def convert_state_dict(weights: Mapping[str, object], source: str = "") -> dict[str, Tensor]:
    """Rename Detectron2's keys to ours; move the classifier's background row to the front.

    Keys outside the detector (``pixel_mean`` / ``pixel_std`` buffers, ``num_batches_tracked``)
    are dropped; any other unknown key is an error naming it.
    """
    tensors = to_tensors(dict(weights), source)
    out, unknown = {}, []
    for key, value in tensors.items():
        if key in ("pixel_mean", "pixel_std") or key.endswith("num_batches_tracked"):
            continue
        new = convert_key(key)
        if new is None:
            unknown.append(key)
            continue
        if new.startswith("roi_heads.box_predictor.cls_score."):  # background last -> first
            value = torch.cat([value[-1:], value[:-1]])
        out[new] = value.float() if value.is_floating_point() else value
    if unknown:
        raise CheckpointError(
            f"{source}: Detectron2 keys this converter does not know ({len(unknown)}): "
            + ", ".join(sorted(unknown)[:8])
        )
    return out


def load_detectron2(path_or_state, config, *, classes=None) -> PeerWeights:
    """A Detectron2 model-zoo file in our names, with the model config it was trained with.

    Args:
        path_or_state: a ``.pkl`` / ``.pth`` file, or its ``model`` dict in memory.
        config: Detectron2's config: a yaml file (``_BASE_`` followed), or a model-zoo name such as
            ``mask_rcnn_R_50_FPN_3x`` / ``COCO-Detection/faster_rcnn_R_50_C4_1x.yaml``.
        classes: C class names (default: COCO's 80 for an 80-class head, else ``class_1``..).

    Returns:
        ``PeerWeights`` with ``model`` set (build it with ``rcnn.convert``).
    """
    source = os.fspath(path_or_state) if isinstance(path_or_state, (str, os.PathLike)) else ""
    raw = read_detectron2_file(path_or_state) if source else dict(path_or_state)
    source = source or "<state dict>"
    if not is_detectron2_state(raw):
        raise CheckpointError(f"{source}: not a Detectron2 R-CNN (no proposal_generator.rpn_head)")
    state_dict = convert_state_dict(raw, source)
    cfg = detectron2_config(config)
    rows = state_dict.get("roi_heads.box_predictor.cls_score.weight")
    if rows is None:
        raise CheckpointError(f"{source}: no roi_heads.box_predictor.cls_score in the file")
    num_classes = int(rows.shape[0]) - 1
    if classes is None:
        classes = cfg.classes if len(cfg.classes) == num_classes else numbered_names(num_classes)
    if len(classes) != num_classes:
        raise CheckpointError(f"{source}: {len(classes)} class names for {num_classes} classes")
    cfg.classes = tuple(classes)
    cfg.backbone.pretrained_base = False
    return PeerWeights(state_dict, tuple(classes), cfg, source)
