"""The ``rcnn`` command: ``rcnn train | eval | predict | check | export | serve | convert``.

Each sub-command lives in its own module of this package with two functions:
``add_arguments(parser)`` and ``run(args) -> int`` (the exit code). Errors a user can fix are raised
as ``rcnn.errors.UserError`` and printed as one line, without a traceback: exit code 2 for bad
input (usage, data, checkpoints), 1 for an output that cannot be written (``OutputError``, or an
``OSError`` such as a full disk or a denied permission on a named file).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from rcnn.engine.runtime import keep_freed_memory
from rcnn.errors import OutputError, UserError
from rcnn.fileio import REASONS, output_error

COMMANDS = {
    "train": "Train Faster R-CNN / Mask R-CNN (no arguments: the shapes demo).",
    "eval": "Evaluate a checkpoint or a detections file (COCO AP, VOC07/VOC12 mAP).",
    "predict": "Run a model on images, folders or globs; write overlays and COCO results.",
    "check": "Validate a COCO or VOC dataset and report every problem.",
    "export": "Write a model as an ONNX file (dynamic batch and size, checked by onnxruntime).",
    "serve": "Serve a model over HTTP with a web page to try it (FastAPI + uvicorn).",
    "convert": "Turn a GluonCV, Detectron2 or torchvision weight file into an rcnn checkpoint.",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rcnn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"rcnn.cli.{name}")
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(command_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    module = importlib.import_module(f"rcnn.cli.{args.command}")
    keep_freed_memory()  # CPU speed: reuse freed activations (rcnn.engine.runtime)
    try:
        return int(module.run(args) or 0)
    except OutputError as error:  # the input was fine; the output folder could not take it
        print(f"rcnn {args.command}: error: {error}", file=sys.stderr)
        return 1
    except UserError as error:
        print(f"rcnn {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a write outside rcnn.fileio (logs, pictures): still one line
        if error.errno not in REASONS:
            raise
        where = output_error(error, error.filename) if error.filename else REASONS[error.errno]
        print(f"rcnn {args.command}: error: {where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"rcnn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
