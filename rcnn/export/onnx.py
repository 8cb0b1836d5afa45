"""ONNX export of an ``RCNN``: one file, dynamic batch and image size, class names inside.

The contract (docs/CONTRACTS.md, "ONNX files"): input ``images`` uint8 [B, 3, H, W]; outputs
``boxes``, ``scores``, ``labels``, ``num_detections`` (+ ``masks``); metadata ``classes``,
``preset``, ``category_ids``, ``format``.

torch 2.14's default (dynamo) exporter stops at the data-dependent NMS, so the graph is traced by
the TorchScript-based exporter (``dynamo=False``); torchvision registers the ONNX symbolics of
``nms``, ``roi_align`` and ``roi_pool``. ``ExportableRCNN`` keeps every shape symbolic, so one
trace serves every batch size and image size.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import onnx
import torch

from rcnn.errors import UserError
from rcnn.export.graph import ExportableRCNN
from rcnn.models.rcnn import RCNN

FORMAT = "rcnn-onnx/1"
INPUT = "images"
OUTPUTS = ("boxes", "scores", "labels", "num_detections")
MASK_OUTPUT = "masks"
DEFAULT_OPSET = 17
MIN_OPSET = 16  # RoiAlign's coordinate_transformation_mode (aligned=True) arrived in opset 16


def _sample(model: RCNN) -> torch.Tensor:
    """A uint8 [1, 3, h, w] image of the model's test size to trace with (content irrelevant)."""
    short = model.cfg.input.test_short
    long_side = min(model.cfg.input.max_size, round(short * 4 / 3))
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (1, 3, short, long_side), dtype=torch.uint8, generator=generator)


def metadata(model: RCNN, preset: str) -> dict[str, str]:
    """The file's metadata: class names, category ids, preset and format (strings)."""
    category_ids = model.label_to_category_id or list(range(1, model.num_classes + 1))
    return {
        "format": FORMAT,
        "classes": json.dumps(list(model.class_names)),
        "category_ids": json.dumps([int(i) for i in category_ids]),
        "preset": preset,
        "mask": json.dumps(bool(model.has_mask)),
    }


def _fix_detection_axis(proto: onnx.ModelProto, count: int) -> None:
    """State the outputs' detection axis as the constant K it is (the tracer names it)."""
    for output in proto.graph.output:
        dims = output.type.tensor_type.shape.dim
        if output.name != "num_detections" and len(dims) > 1:
            dims[1].ClearField("dim_param")
            dims[1].dim_value = count


def export_onnx(
    model: RCNN, path: str | os.PathLike, *, opset: int = DEFAULT_OPSET, preset: str = ""
) -> Path:
    """Write ``model`` (an ``RCNN``, moved to the CPU and eval mode) as an ONNX file at ``path``.

    Args:
        preset: the preset name recorded in the metadata (e.g. ``mask_rcnn_shapes``).

    Returns:
        the path written (atomically: a temporary file renamed into place).
    """
    if opset < MIN_OPSET:
        raise UserError(f"--opset {opset}: the graph needs opset {MIN_OPSET} or later")
    path = Path(path)
    module = ExportableRCNN(model.cpu().eval()).eval()
    outputs = list(OUTPUTS) + ([MASK_OUTPUT] if module.has_mask else [])
    axes = {INPUT: {0: "batch", 2: "height", 3: "width"}}
    axes.update({name: {0: "batch"} for name in OUTPUTS})
    if module.has_mask:
        axes[MASK_OUTPUT] = {0: "batch", 2: "height", 3: "width"}
    tmp = path.with_name(path.name + ".tmp")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shapes read as Python values
        torch.onnx.export(
            module,
            (_sample(model),),
            str(tmp),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT],
            output_names=outputs,
            dynamic_axes=axes,
        )
    proto = onnx.load(str(tmp))
    _fix_detection_axis(proto, module.detections_per_image)
    for key, value in metadata(model, preset).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(tmp))
    os.replace(tmp, path)
    return path
