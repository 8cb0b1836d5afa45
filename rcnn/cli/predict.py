"""`rcnn predict`: run a model on images, folders or globs; write overlays and COCO results.

    rcnn predict photos/ more/*.jpg one.png --checkpoint runs/my_run/best.pth --output preds/
    rcnn predict photos/ --onnx model.onnx --output preds/   # `rcnn export`'s file, onnxruntime

Writes ``<output>/<image stem>.png`` (boxes, class names, scores and translucent masks of the
detections scoring at least ``--threshold``), ``<output>/results.json`` (those detections in the
COCO results format; ``image_id`` is the image's position in ``images.json``, ``category_id`` is
the model's ``label_to_category_id`` when it has one, else label + 1) and ``<output>/images.json``
(``[{"id", "file_name", "height", "width"}]``). Unreadable images are reported and skipped.
``--splash`` writes matterport's colour splash instead of the overlay (instances in colour over a
grayscale image); ``--tile SIZE [--overlap F]`` runs the model on overlapping tiles of large images
(``rcnn.engine.tiling``).
"""

from __future__ import annotations

import argparse
import glob
import logging
from pathlib import Path
from typing import Any

import torch

from rcnn.cli.model_source import (
    add_model_arguments,
    add_tile_arguments,
    has_model,
    load_model,
    tiled,
)
from rcnn.data import read_image
from rcnn.errors import UserError
from rcnn.evaluation.report import write_json
from rcnn.evaluation.results import detections_to_results
from rcnn.export.runtime import OnnxDetector
from rcnn.fileio import output_folder
from rcnn.structures import Detections
from rcnn.visualize import color_splash, draw_instances

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n", 1)[1].strip()
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or globs")
    add_model_arguments(parser)
    parser.add_argument(
        "--onnx",
        metavar="FILE",
        help="an ONNX file of `rcnn export` instead: run by onnxruntime, no PyTorch model built",
    )
    parser.add_argument("--output", required=True, help="folder for overlays and results.json")
    parser.add_argument("--threshold", type=float, default=0.5, help="minimum score (0.5)")
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward pass")
    parser.add_argument(
        "--splash",
        action="store_true",
        help="colour splash: detected instances in colour over a grayscale image (mask models)",
    )
    add_tile_arguments(parser)


def _folder_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def collect_inputs(inputs: list[str]) -> list[Path]:
    """The image files that ``inputs`` name, in order, without repeats.

    A file is taken as it is (unreadable ones are skipped later); a folder gives its images
    (by suffix, not recursive); anything else is a glob.

    Raises:
        UserError: an input that matches nothing.
    """
    paths: list[Path] = []
    for text in inputs:
        path = Path(text)
        if path.is_file():
            found = [path]
        elif path.is_dir():
            found = _folder_images(path)
            if not found:
                raise UserError(
                    f"{text}: folder has no images ({', '.join(sorted(IMAGE_SUFFIXES))})"
                )
        else:
            found = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            if not found:
                raise UserError(f"{text}: no such file or folder, and no file matches it as a glob")
        paths += [p for p in found if p not in paths]
    return paths


def _read(path: Path) -> torch.Tensor | None:
    try:
        return read_image(str(path))
    except (UserError, OSError, ValueError) as error:
        logger.warning("skipped unreadable image: %s", error)
        return None


def _keep(detections: Detections, threshold: float) -> Detections:
    keep = (detections.scores >= threshold).cpu()
    detections = detections.to("cpu")
    masks = None if detections.masks is None else detections.masks[keep]
    return Detections(
        detections.boxes[keep], detections.scores[keep], detections.labels[keep], masks
    )


def _overlay_path(output: Path, path: Path, used: set[str]) -> Path:
    name = path.stem
    if name in used:
        name = f"{path.stem}_{len(used)}"
    used.add(name)
    return output / f"{name}.png"


class _Writer:
    """Collects results and writes one overlay per image."""

    def __init__(self, model: Any, output: Path, threshold: float, splash: bool = False) -> None:
        self.class_names = list(model.class_names)
        mapping = getattr(model, "label_to_category_id", None)
        self.category_ids = list(mapping) if mapping else list(range(1, len(self.class_names) + 1))
        self.output, self.threshold, self.splash = output, threshold, splash
        self.results: list[dict[str, Any]] = []
        self.images: list[dict[str, Any]] = []
        self.used: set[str] = set()

    def add(self, path: Path, image: torch.Tensor, detections: Detections) -> None:
        image_id = len(self.images)
        height, width = image.shape[-2:]
        self.images.append(
            {"id": image_id, "file_name": str(path), "height": height, "width": width}
        )
        kept = _keep(detections, self.threshold)
        self.results += detections_to_results(image_id, kept, self.category_ids)
        if self.splash:
            picture = color_splash(image, kept.masks)
        else:
            picture = draw_instances(image, kept, self.class_names, score_thresh=self.threshold)
        picture.save(_overlay_path(self.output, path, self.used))


def _predict_batches(model: Any, paths: list[Path], writer: _Writer, batch_size: int) -> int:
    """Run the model over ``paths`` in batches; returns how many images were skipped."""
    skipped = 0
    for start in range(0, len(paths), batch_size):
        batch = [(p, _read(p)) for p in paths[start : start + batch_size]]
        skipped += sum(image is None for _, image in batch)
        batch = [(p, image) for p, image in batch if image is not None]
        if not batch:
            continue
        with torch.inference_mode():
            detections = model([image for _, image in batch])
        for (path, image), dets in zip(batch, detections, strict=True):
            writer.add(path, image, dets)
    return skipped


def _model(args: argparse.Namespace) -> Any:
    """``--onnx FILE`` (an ``OnnxDetector``) or the PyTorch model of the model options."""
    if not args.onnx:
        if not has_model(args):
            raise UserError(
                "give a model: --checkpoint CKPT, --torchvision NAME [--weights FILE], "
                "or --onnx FILE"
            )
        return load_model(args).eval()
    if has_model(args):
        raise UserError(
            "give either --onnx FILE or a model (--checkpoint / --torchvision), not both"
        )
    if args.fast or args.device not in (None, "cpu"):
        raise UserError("--fast and --device do not apply to --onnx (onnxruntime on the CPU)")
    return OnnxDetector(args.onnx)


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    if not 0.0 <= args.threshold <= 1.0:
        raise UserError(f"--threshold must be in [0, 1], got {args.threshold}")
    output_folder(args.output)  # an existing file or a read-only place: before the model loads
    paths = collect_inputs(args.inputs)
    model = _model(args)
    if args.splash and not getattr(model, "has_mask", False):
        raise UserError("--splash needs a model that predicts masks (a mask_rcnn network)")
    model = tiled(model, args)
    output = output_folder(args.output)
    writer = _Writer(model, output, args.threshold, splash=args.splash)
    skipped = _predict_batches(model, paths, writer, args.batch_size)
    if not writer.images:
        raise UserError(f"none of the {len(paths)} input images could be read")
    write_json(output / "results.json", writer.results)
    write_json(output / "images.json", writer.images)
    print(
        f"{len(writer.images)} images, {len(writer.results)} detections with score >= "
        f"{args.threshold:g}" + (f", {skipped} unreadable skipped" if skipped else "")
    )
    print(f"wrote overlays, {output / 'results.json'} and {output / 'images.json'}")
    return 0
