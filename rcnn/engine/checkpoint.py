"""Checkpoints: atomic writes, validated reads, RNG state capture, and ``load_model``.

A checkpoint is a ``torch.save`` dict with ``model``, ``optimizer``, ``scheduler``, ``scaler``,
``rng``, ``iteration``, ``epoch``, ``config`` (the resolved TrainConfig as a dict, model config
included), ``class_names``, ``format_version``, ``metrics`` (the last validation's, or None) and
``checksum`` (``rcnn.integrity.state_checksum``: sha256 of everything else, verified on load;
files written before checksums existed load unverified). Every value is a tensor or a plain Python
container, so checkpoints load with ``weights_only=True`` (no code runs when a file is read).
"""

from __future__ import annotations

import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rcnn.config import from_dict
from rcnn.errors import CheckpointError, UserError
from rcnn.fileio import atomic_file
from rcnn.integrity import state_checksum, verify_checksum
from rcnn.models.build import build_model
from rcnn.models.config import ModelConfig

FORMAT_VERSION = 1
REQUIRED_KEYS = ("model", "config", "class_names", "format_version")


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically, with a checksum of its content.

    ``rcnn.fileio.atomic_file``: a temporary file in the same folder, fsync, rename. A crash or
    SIGKILL at any moment leaves either the previous file or the new one, never a half-written
    file (a killed process may leave a ``.tmp`` file behind, which is never read). A full disk, a
    read-only folder or a denied permission is an ``OutputError`` naming the folder, with the
    previous checkpoint intact.
    """
    state = {k: v for k, v in state.items() if k != "checksum"}
    state["format_version"] = FORMAT_VERSION
    state["checksum"] = state_checksum(state)
    with atomic_file(path) as handle:
        torch.save(state, handle)


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict:
    """Read and validate a checkpoint (``CheckpointError`` naming the file for any problem)."""
    path = Path(path)
    if path.is_dir():
        path = path / "last.pth"
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): a half-written file?")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated and cannot be read ({first[:160]})"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} is not an rcnn checkpoint (not a dict)")
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} is not an rcnn training checkpoint (missing {', '.join(missing)})"
        )
    verify_checksum(state, f"checkpoint {path}")
    if state["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {state['format_version']}; this rcnn reads "
            f"up to {FORMAT_VERSION} (upgrade rcnn)"
        )
    return state


def load_model(path: str | Path, *, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild the model from the config stored in a checkpoint and load its weights.

    Returns:
        the model (an ``RCNN``) in eval mode on ``device``.

    Raises:
        CheckpointError: missing, corrupt, truncated file, or weights that do not fit the config.
    """
    state = load_checkpoint(path)
    model_dict = (state["config"] or {}).get("model")
    if not isinstance(model_dict, dict):
        raise CheckpointError(f"checkpoint {path} holds no model config")
    try:
        model_cfg = from_dict(ModelConfig, model_dict)
    except UserError as error:
        raise CheckpointError(
            f"checkpoint {path}: its model config does not fit ({error})"
        ) from None
    model = build_model(model_cfg)
    load_weights(model, state["model"], source=str(path))
    names = list(getattr(model, "class_names", state["class_names"]))
    if names != list(state["class_names"]):
        raise CheckpointError(
            f"checkpoint {path}: class names {state['class_names']} do not match its model "
            f"config's {names}"
        )
    return model.to(device).eval()


def load_weights(model: torch.nn.Module, weights: dict[str, Any], *, source: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line ``CheckpointError`` on any mismatch."""
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    shapes = [
        f"{k} {tuple(weights[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in weights and tuple(weights[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches (e.g. {'; '.join(shapes[:3])})")
    if problems:
        raise CheckpointError(f"weights in {source} do not fit the model: " + "; ".join(problems))
    model.load_state_dict(weights)


def capture_rng() -> dict[str, Any]:
    """The Python, NumPy, torch (and CUDA) RNG states as tensors and plain containers."""
    version, mt_state, gauss = random.getstate()
    np_state = np.random.get_state()
    rng = {
        "python": [version, list(mt_state), gauss],
        "numpy": [
            np_state[0],
            torch.from_numpy(np_state[1].astype(np.int64)),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def restore_rng(rng: dict[str, Any]) -> None:
    """Inverse of ``capture_rng``."""
    version, mt_state, gauss = rng["python"]
    random.setstate((version, tuple(mt_state), gauss))
    name, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        states = rng["cuda"][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(states)


def plain(tree: Any) -> Any:
    """``tree`` (e.g. an evaluator's metrics) with NumPy values and tensors as Python numbers and
    lists, so that a checkpoint holding it loads with ``weights_only=True``."""
    if isinstance(tree, dict):
        return {str(k): plain(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [plain(v) for v in tree]
    if isinstance(tree, (np.ndarray, np.generic)) or torch.is_tensor(tree):
        return plain(tree.tolist())
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return tree
    return str(tree)
