"""`rcnn export`: write a model as an ONNX file that onnxruntime runs (batch and size dynamic).

    rcnn export --checkpoint runs/my_run/best.pth --output model.onnx
    rcnn export --torchvision maskrcnn_resnet50_fpn --output maskrcnn.onnx
    rcnn predict photos/ --onnx model.onnx --output preds/        # no PyTorch model

The file takes uint8 RGB images [B, 3, H, W] (resizing and normalisation are inside) and gives
boxes [B, K, 4], scores [B, K], labels [B, K] (0-based), num_detections [B] and, for Mask R-CNN,
masks [B, K, H, W] (uint8 0/1); the class names are in its metadata (docs/CONTRACTS.md).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from rcnn.cli.model_source import add_model_arguments, load_model
from rcnn.errors import UserError
from rcnn.export.onnx import DEFAULT_OPSET, export_onnx


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n", 1)[1].strip()
    add_model_arguments(parser)
    parser.add_argument("--output", required=True, help="the .onnx file to write")
    parser.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset ({DEFAULT_OPSET})"
    )


def preset_name(args: argparse.Namespace) -> str:
    """The preset the model was built from: ``--torchvision NAME`` or the checkpoint's network."""
    if args.torchvision:
        return args.torchvision
    try:  # mmap: only the config is read, not every tensor
        state = torch.load(args.checkpoint, map_location="cpu", weights_only=True, mmap=True)
        return str((state.get("config") or {}).get("network", ""))
    except Exception:  # the model loaded, so this is only a missing name
        return ""


def run(args: argparse.Namespace) -> int:
    if args.fast:
        raise UserError("--fast does not apply to export (the ONNX runtime optimises the graph)")
    output = Path(args.output)
    if not output.parent.is_dir():
        raise UserError(f"--output {output}: folder {output.parent} does not exist")
    args.device = "cpu"
    model = load_model(args)
    start = time.perf_counter()
    export_onnx(model, output, opset=args.opset, preset=preset_name(args))
    size_mb = output.stat().st_size / 2**20
    print(
        f"wrote {output} ({size_mb:.1f} MB, opset {args.opset}, {len(model.class_names)} classes"
        f"{', masks' if model.has_mask else ''}) in {time.perf_counter() - start:.1f} s"
    )
    return 0
