"""Run an exported ONNX detector with onnxruntime, as ``RCNN`` is called (no PyTorch model).

Shape shorthand: B images, K detections per image (padded), H/W image size.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor

from rcnn.errors import UserError
from rcnn.export.onnx import FORMAT, INPUT, MASK_OUTPUT, OUTPUTS
from rcnn.structures import Detections


def _session(path: Path, threads: int | None) -> ort.InferenceSession:
    if not path.is_file():
        raise UserError(f"{path}: no such ONNX file")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own classes for every kind of bad file
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UserError(f"{path}: not a readable ONNX model ({first[:200]})") from None


def check_contract(path: Path, session: ort.InferenceSession) -> dict[str, str]:
    """The file's metadata, after checking its inputs, outputs and metadata are ours.

    Raises:
        UserError: naming what is missing or different (an ONNX file from elsewhere).
    """
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    problems = []
    image_input = inputs.get(INPUT)
    if image_input is None:
        problems.append(f"input {INPUT!r} (it has {sorted(inputs) or 'none'})")
    elif image_input.type != "tensor(uint8)" or len(image_input.shape) != 4:
        problems.append(
            f"input {INPUT!r} as uint8 [B, 3, H, W] (it is {image_input.type} {image_input.shape})"
        )
    missing = [name for name in OUTPUTS if name not in outputs]
    if missing:
        problems.append(f"outputs {missing} (it has {sorted(outputs)})")
    meta = session.get_modelmeta().custom_metadata_map
    if "classes" not in meta:
        problems.append("metadata 'classes' (the class names)")
    if problems:
        raise UserError(
            f"{path}: not an rcnn ONNX detector ({FORMAT}); missing " + "; ".join(problems)
        )
    return meta


def _json_list(path: Path, meta: dict[str, str], key: str) -> list:
    try:
        value = json.loads(meta[key])
    except (KeyError, json.JSONDecodeError):
        value = None
    if not isinstance(value, list):
        raise UserError(f"{path}: metadata {key!r} is not a JSON list")
    return value


class OnnxDetector:
    """An exported detector: ``detector(images) -> list[Detections]``, like ``RCNN`` in eval mode.

    Attributes:
        class_names, label_to_category_id, has_mask, preset: from the file's metadata.

    Args:
        path: the ONNX file (``rcnn export``).
        threads: onnxruntime's intra-op threads (None: its default, every core).
    """

    training = False

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None) -> None:
        self.path = Path(path)
        self.session = _session(self.path, threads)
        meta = check_contract(self.path, self.session)
        self.class_names = [str(name) for name in _json_list(self.path, meta, "classes")]
        self.label_to_category_id = (
            [int(i) for i in _json_list(self.path, meta, "category_ids")]
            if "category_ids" in meta
            else None
        )
        self.preset = meta.get("preset", "")
        self.has_mask = MASK_OUTPUT in {o.name for o in self.session.get_outputs()}
        self.output_names = list(OUTPUTS) + ([MASK_OUTPUT] if self.has_mask else [])

    def eval(self) -> OnnxDetector:
        return self

    def run_batch(self, batch: np.ndarray) -> list[Detections]:
        """Detections of uint8 images [B, 3, H, W] of one size."""
        outputs = self.session.run(self.output_names, {INPUT: np.ascontiguousarray(batch)})
        boxes, scores, labels, counts = outputs[:4]
        out = []
        for i, count in enumerate(counts.tolist()):
            masks = torch.from_numpy(outputs[4][i, :count] > 0) if self.has_mask else None
            out.append(
                Detections(
                    torch.from_numpy(boxes[i, :count].copy()),
                    torch.from_numpy(scores[i, :count].copy()),
                    torch.from_numpy(labels[i, :count].copy()),
                    masks,
                )
            )
        return out

    def __call__(self, images: list[Tensor]) -> list[Detections]:
        """Detections of uint8 [3, H, W] images; runs of equal-size images go as one batch."""
        out: list[Detections] = []
        start = 0
        while start < len(images):
            end = start + 1
            while end < len(images) and images[end].shape == images[start].shape:
                end += 1
            batch = torch.stack([img.cpu() for img in images[start:end]]).numpy()
            out += self.run_batch(batch)
            start = end
        return out
