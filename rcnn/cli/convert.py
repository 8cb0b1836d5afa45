"""`rcnn convert`: a GluonCV, Detectron2 or torchvision weight file -> an rcnn checkpoint.

    rcnn convert --from gluoncv --network mask_rcnn_fpn_resnet50_v1b_coco IN.params --output OUT.pth
    rcnn convert --from detectron2 --network mask_rcnn_R_50_FPN_3x model_final.pkl --output OUT.pth
    rcnn convert --from detectron2 --network configs/my_config.yaml model_final.pth -o OUT.pth
    rcnn convert --from torchvision --network maskrcnn_resnet50_fpn IN.pth --output OUT.pth

The output has the layout of a training run's checkpoint (weights, the model config, class
names), so ``rcnn eval --checkpoint``, ``rcnn predict --checkpoint`` and ``rcnn train --weights``
take it. ``--network``: GluonCV's zoo name (``rcnn.list_models()``), Detectron2's config (its
yaml file, ``_BASE_`` followed, or a model-zoo name), or torchvision's builder.
"""

from __future__ import annotations

import argparse
import logging

import yaml

from rcnn.convert import PEERS, checkpoint_state, peer_model
from rcnn.engine.checkpoint import save_checkpoint
from rcnn.errors import UserError

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.add_argument("--from", dest="peer", required=True, choices=PEERS, help="who wrote IN")
    parser.add_argument(
        "--network",
        required=True,
        help="GluonCV zoo name | Detectron2 config (yaml or zoo name) | torchvision builder",
    )
    parser.add_argument("input", metavar="IN", help="the peer's weight file")
    parser.add_argument("-o", "--output", required=True, help="checkpoint to write (.pth)")
    parser.add_argument(
        "--classes",
        default=None,
        help="comma-separated class names (default: the file's dataset names, else class_1..)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model config change, e.g. --set input.test_short=600 (repeatable)",
    )


def run(args: argparse.Namespace) -> int:
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    overrides = {}
    for item in args.overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r}: expected key=value (e.g. --set input.test_short=600)")
        overrides[key.strip().removeprefix("model.")] = yaml.safe_load(raw) if raw else raw
    model = peer_model(
        args.peer, args.input, network=args.network, classes=classes, overrides=overrides or None
    )
    if args.output == args.input:
        raise UserError("--output must differ from the input file")
    state = checkpoint_state(model, network=args.network, source=args.input, peer=args.peer)
    save_checkpoint(args.output, state)
    print(
        f"rcnn convert: {args.input} ({args.peer} {args.network}) -> {args.output}: "
        f"{len(model.class_names)} classes, {sum(p.numel() for p in model.parameters())} "
        "parameters"
    )
    return 0
