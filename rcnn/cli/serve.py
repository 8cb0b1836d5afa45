"""`rcnn serve`: a web page and an HTTP endpoint around one model (FastAPI + uvicorn).

    rcnn serve --checkpoint runs/my_run/best.pth              # then open http://127.0.0.1:8000/
    rcnn serve --onnx model.onnx --port 8080                  # onnxruntime only
    curl --data-binary @photo.jpg http://127.0.0.1:8000/predict

``POST /predict`` takes an image file's bytes as the body and answers ``{"detections": [{"box",
"score", "label", "class", "mask"}], "width", "height", "time_ms"}`` (masks as COCO RLE; query
``?threshold=0.5`` drops lower scores). Requests queue on the one model. A body that is no image
or is empty gets HTTP 400, one over ``--max-mb`` 413, each with ``{"error": ...}``.
``GET /health`` says which model runs.
"""

from __future__ import annotations

import argparse

import uvicorn

from rcnn.cli.model_source import add_model_arguments, has_model, load_model
from rcnn.errors import UserError
from rcnn.export.runtime import OnnxDetector
from rcnn.serve import create_app


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n", 1)[1].strip()
    add_model_arguments(parser)
    parser.add_argument("--onnx", metavar="FILE", help="an ONNX file of `rcnn export` instead")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (8000)")
    parser.add_argument("--max-mb", type=float, default=20.0, help="largest body in MB (20)")


def _detector(args: argparse.Namespace):
    if args.onnx:
        if has_model(args):
            raise UserError("give either --onnx FILE or --checkpoint / --torchvision, not both")
        detector = OnnxDetector(args.onnx)
        return detector, detector.preset or args.onnx
    if not has_model(args):
        raise UserError(
            "give a model: --checkpoint CKPT, --torchvision NAME [--weights FILE], or --onnx FILE"
        )
    return load_model(args).eval(), args.torchvision or args.checkpoint


def run(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise UserError(f"--port must be in 1..65535, got {args.port}")
    if args.max_mb <= 0:
        raise UserError(f"--max-mb must be positive, got {args.max_mb}")
    detector, name = _detector(args)
    app = create_app(detector, name=str(name), max_bytes=int(args.max_mb * 2**20))
    print(f"serving {name} on http://{args.host}:{args.port}/ (Ctrl-C stops)")
    uvicorn.run(app, host=args.host, port=args.port, workers=1, log_level="info")
    return 0
