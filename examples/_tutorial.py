"""Plumbing shared by the two tutorial scripts (arguments, small-run knobs, printing, summary).

Nothing here is part of the tutorials' story: each script reads top to bottom as its GluonCV
tutorial does; this module only keeps the command-line handling and the bookkeeping that the CI
test reads (``summary.json``) out of the way.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

import rcnn
from rcnn.errors import UserError
from rcnn.models.build import build_model
from rcnn.zoo import default_classes, get_preset


def parse_args(description: str, *, network: str, fallback: str, data: str) -> argparse.Namespace:
    """The tutorial scripts' common arguments (GluonCV's tutorial values as defaults)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--data-root",
        default=None,
        help=f"dataset: a folder or COCO json (default: the real {data} location that "
        f"rcnn.data.build_dataset('{data}') reads, ~/.cache/rcnn/datasets/{data})",
    )
    parser.add_argument("--output", default="tutorial_output", help="folder for the pictures")
    parser.add_argument(
        "--network",
        default=None,
        help=f"model name from rcnn.list_models() (default: {network}; {fallback} until "
        f"{network} is in the zoo)",
    )
    parser.add_argument("--short", type=int, default=600, help="short side of resized images")
    parser.add_argument("--max-size", type=int, default=1000, help="long side limit")
    parser.add_argument("--steps", type=int, default=1, help="SGD steps of the training loop")
    parser.add_argument("--num-workers", type=int, default=0, help="data loader processes")
    parser.add_argument("--no-pretrained-base", action="store_true", help="random body init")
    parser.add_argument(
        "--backbone", default=None, help="small-run knob: a smaller body (e.g. resnet18)"
    )
    parser.add_argument(
        "--rois",
        type=int,
        default=None,
        help="small-run knob: RoIs sampled per image in training and proposals kept at test time",
    )
    parser.add_argument(
        "--model-lines", type=int, default=0, help="print only this many lines of the model"
    )
    parser.add_argument("--seed", type=int, default=233, help="the tutorial's seed")
    args = parser.parse_args()
    args.network = args.network or (network if network in rcnn.list_models() else fallback)
    return args


def get_network(args: argparse.Namespace, classes: Sequence[str]) -> torch.nn.Module:
    """``rcnn.get_model(args.network, ...)``, with the small-run knobs applied.

    ``--backbone`` needs the config before the model is built, so it goes through the preset
    (``rcnn.zoo.get_preset`` + ``build_model``: what ``get_model`` does inside); the other knobs
    are config fields the model reads at each call.
    """
    pretrained_base = not args.no_pretrained_base
    if args.backbone is None:
        net = rcnn.get_model(args.network, pretrained_base=pretrained_base, classes=classes)
    else:
        cfg = get_preset(args.network).model
        cfg.classes = tuple(classes) if classes else default_classes(args.network, cfg)
        cfg.backbone.name = args.backbone
        cfg.backbone.pretrained_base = pretrained_base
        net = build_model(cfg)
    # eval mode resizes raw images itself, to the preset's test size unless told otherwise
    net.cfg.input.test_short, net.cfg.input.max_size = args.short, args.max_size
    if args.rois is not None:
        net.cfg.box_head.batch_size_per_image = args.rois
        net.cfg.rpn.post_nms_topk = (net.cfg.rpn.post_nms_topk[0], args.rois)
    return net


def print_model(net: torch.nn.Module, max_lines: int) -> int:
    """``print(net)``, cut to ``max_lines`` lines when > 0; returns the number of lines."""
    lines = repr(net).splitlines()
    shown = lines[:max_lines] if max_lines > 0 else lines
    print("\n".join(shown))
    if len(shown) < len(lines):
        print(f"... ({len(lines) - len(shown)} more lines; --model-lines 0 prints all)")
    return len(lines)


def shape(value: Any) -> list[int] | list[list[int]]:
    """A tensor's shape as a list (a list of shapes for a list of tensors)."""
    if isinstance(value, (list, tuple)):
        return [shape(item) for item in value]
    return list(value.shape)


def heading(title: str) -> None:
    print(f"\n# {title}\n# {'-' * len(title)}")


def scalars(losses: dict[str, torch.Tensor]) -> dict[str, float]:
    """The scalar entries of a train-mode output (losses and diagnostics) as floats."""
    return {
        key: float(value.detach())
        for key, value in losses.items()
        if isinstance(value, torch.Tensor) and value.dim() == 0
    }


def total_loss(losses: dict[str, torch.Tensor]) -> torch.Tensor:
    """The sum of the ``loss_*`` terms (what the training loop back-propagates)."""
    return sum(value for key, value in losses.items() if key.startswith("loss_"))


def all_finite(values: dict[str, float]) -> bool:
    return all(math.isfinite(v) for v in values.values())


def save_axes(ax: Any, path: Path) -> str:
    """Write the figure of a ``plot_bbox`` axes to ``path`` (Agg canvas, no window)."""
    ax.figure.savefig(path, dpi=80, bbox_inches="tight")
    print("saved", path)
    return os.fspath(path)


def write_summary(output: Path, summary: dict[str, Any]) -> None:
    """``summary.json`` in the output folder: what the CI test checks."""
    path = output / "summary.json"
    path.write_text(json.dumps(summary, indent=1))
    print("wrote", path)


def run(main: Callable[[], None]) -> None:
    """Run a tutorial; a dataset / model problem is one line naming the file, not a traceback."""
    try:
        main()
    except UserError as error:
        raise SystemExit(f"error: {error}\n(pass --data-root to use another dataset)") from None
