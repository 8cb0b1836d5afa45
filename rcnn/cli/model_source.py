"""The model ``rcnn eval`` and ``rcnn predict`` run: ``--checkpoint`` of ours, or torchvision's
weights with ``--torchvision NAME [--weights FILE]``; ``--device``, ``--fast`` and ``--amp`` for
both."""

from __future__ import annotations

import argparse

import torch

from rcnn.engine import checkpoint
from rcnn.engine.tiling import TiledPredictor
from rcnn.errors import UserError
from rcnn.models import fast
from rcnn.ops.precision import AMP_CHOICES, resolve_amp
from rcnn.zoo import load_torchvision, torchvision_hub_file


def add_model_arguments(group: argparse._ActionsContainer) -> None:
    """``--checkpoint``, ``--torchvision``, ``--weights``, ``--device``, ``--fast``."""
    group.add_argument("--checkpoint", help="checkpoint written by `rcnn train`")
    group.add_argument(
        "--torchvision",
        metavar="NAME",
        help="torchvision's weights for builder NAME instead (e.g. maskrcnn_resnet50_fpn)",
    )
    group.add_argument(
        "--weights",
        help="torchvision state dict file (with --torchvision; default: torchvision's COCO_V1 file "
        "of NAME in the torch hub cache, where torchvision's weights='COCO_V1' puts it)",
    )
    group.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    group.add_argument(
        "--fast",
        action="store_true",
        help="frozen BN folded into convs + channels-last (rcnn.models.fast): faster, "
        "detections within float rounding of the default model",
    )
    group.add_argument(
        "--amp",
        nargs="?",
        const="auto",
        default="off",
        choices=AMP_CHOICES,
        help="mixed precision (alone: auto = bf16 where the CPU has it natively, AMX or "
        "AVX512-BF16, else float32; bf16 or fp16 on a GPU); with --fast's options, which bf16 "
        "needs to pay",
    )


def has_model(args: argparse.Namespace) -> bool:
    return bool(args.checkpoint or args.torchvision)


def load_model(args: argparse.Namespace) -> torch.nn.Module:
    """The model that ``--checkpoint`` or ``--torchvision NAME [--weights FILE]`` names, on
    ``--device``, sped up by ``rcnn.models.fast.optimize`` with ``--fast`` or ``--amp``."""
    amp = getattr(args, "amp", "off")
    resolve_amp(amp, torch.device(_device(args)))  # a UserError (fp16 on a CPU...) first
    model = _load_named_model(args)
    return fast.optimize(model, amp=amp) if args.fast or amp != "off" else model


def _device(args: argparse.Namespace) -> str:
    return check_device(args.device)


def check_device(text: str | None) -> str:
    """``--device`` checked: a device name torch knows, and a GPU that exists (default: cuda
    when available, else cpu). ``UserError`` before any model is built."""
    if not text:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(text)
    except RuntimeError:
        raise UserError(f"--device {text}: not a device (use cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"--device {text}: CUDA is not available on this machine; use cpu")
        if device.index is not None and device.index >= count:
            raise UserError(f"--device {text}: there are only {count} CUDA device(s)")
    elif device.type != "cpu":
        raise UserError(f"--device {text}: only cpu and cuda devices are supported")
    return text


def _load_named_model(args: argparse.Namespace) -> torch.nn.Module:
    device = _device(args)
    if args.checkpoint and args.torchvision:
        raise UserError("give either --checkpoint or --torchvision, not both")
    if args.weights and not args.torchvision:
        raise UserError(
            "--weights FILE goes with --torchvision NAME (a checkpoint of ours: --checkpoint)"
        )
    if args.checkpoint:
        return checkpoint.load_model(args.checkpoint, device=device)
    if args.torchvision:
        weights = args.weights or torchvision_hub_file(args.torchvision)
        return load_torchvision(args.torchvision, weights).to(device).eval()
    raise UserError("give a model: --checkpoint CKPT, or --torchvision NAME [--weights FILE]")


def add_tile_arguments(group: argparse._ActionsContainer) -> None:
    """``--tile SIZE`` and ``--overlap F``: tiled inference (``rcnn.engine.tiling``)."""
    group.add_argument(
        "--tile",
        type=int,
        metavar="SIZE",
        help="run the model on overlapping SIZE x SIZE tiles of each image (large images)",
    )
    group.add_argument(
        "--overlap", type=float, default=0.2, help="share of a tile its neighbour overlaps (0.2)"
    )


def tiled(model: torch.nn.Module, args: argparse.Namespace) -> torch.nn.Module:
    """``model`` wrapped in ``TiledPredictor`` when ``--tile`` is given."""
    if args.tile is None:
        return model
    if args.tile < 32 or not 0.0 <= args.overlap < 1.0:
        raise UserError(
            f"--tile must be >= 32 and --overlap in [0, 1), got {args.tile} and {args.overlap}"
        )
    return TiledPredictor(model, args.tile, args.overlap)
