"""What a peer toolkit's weight file turns into: our state dict and the model config it needs.

Shape shorthand: C classes (no background).

The converters (``rcnn.weights.gluoncv``, ``rcnn.weights.detectron2``) only map keys and
settings; building the model from a ``PeerWeights`` is the zoo's job (``rcnn.convert``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rcnn.errors import CheckpointError
from rcnn.models.config import ModelConfig
from rcnn.weights.mxnet_params import is_params_file


@dataclass
class PeerWeights:
    """A peer's weights in our names.

    Attributes:
        state_dict: our keys -> tensors (every key of the model, nothing else).
        classes: C class names (the file's, or ``class_1`` .. when it does not say).
        model: the full model config for files that carry their own settings (Detectron2's);
            None where the caller starts from one of our presets (GluonCV's zoo names).
        source: the file it came from (for messages).
    """

    state_dict: dict[str, Tensor]
    classes: tuple[str, ...]
    model: ModelConfig | None = None
    source: str = ""


def to_tensors(arrays: dict[str, Any], source: str) -> dict[str, Tensor]:
    """``{name: numpy array or tensor}`` -> float32 / int64 tensors (a clear error otherwise)."""
    out = {}
    for name, value in arrays.items():
        if isinstance(value, Tensor):
            out[name] = value.detach().cpu()
            continue
        if not isinstance(value, np.ndarray):
            raise CheckpointError(f"{source}: {name} is a {type(value).__name__}, not an array")
        out[name] = torch.from_numpy(np.ascontiguousarray(value))
    return out


def numbered_names(num_classes: int) -> tuple[str, ...]:
    """``class_1`` .. ``class_C``: names for a file that does not carry its own."""
    return tuple(f"class_{i + 1}" for i in range(num_classes))


def peer_kind(path: str | os.PathLike) -> str | None:
    """``"gluoncv"`` (MXNet's NDArray list magic) or ``"detectron2"`` (a ``.pkl`` that is not a
    torch zip file) for a peer's weight file, else None."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        return None
    if is_params_file(path):
        return "gluoncv"
    if path.endswith(".pkl"):
        return "detectron2"
    return None


def peer_file_error(path: str | os.PathLike, what: str = "checkpoint") -> CheckpointError | None:
    """The error for a peer's weight file given where an rcnn ``what`` is expected (else None)."""
    kind = peer_kind(path)
    if kind is None:
        return None
    label = "a GluonCV .params" if kind == "gluoncv" else "a Detectron2 .pkl"
    network = "NAME" if kind == "gluoncv" else "CONFIG"
    return CheckpointError(
        f"{path} is {label} file, not an rcnn {what}: convert it first with `rcnn convert "
        f"--from {kind} --network {network} {path} --output {Path(path).stem}.pth`"
    )
