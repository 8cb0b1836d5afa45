"""State dicts from files and checked loading into a module (never a silent partial load).

Used by every layer that loads weights: ImageNet bodies (``rcnn.models.pretrained``), the zoo's
full models and converted peers' files (``rcnn.zoo``), checkpoints (``rcnn.engine.checkpoint``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from rcnn.errors import CheckpointError
from rcnn.integrity import verify_checksum

__all__ = ["load_state_dict_checked", "read_state_dict"]


def read_state_dict(source: Mapping[str, Any] | str | os.PathLike) -> dict[str, Tensor]:
    """A state dict from a mapping or a file (a bare state dict or a checkpoint with ``model``,
    whose checksum is verified)."""
    source_name = "(in memory)"
    if isinstance(source, (str, os.PathLike)):
        path = source_name = os.fspath(source)
        if path.startswith(("http://", "https://")):
            raise CheckpointError(
                f"{path}: rcnn never downloads weights (there is no network at run time); "
                "download the file yourself and pass its local path"
            )
        if not os.path.isfile(path):
            raise CheckpointError(f"{path}: no such weight file")
        try:
            source = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a truncated or foreign file: say which one
            raise CheckpointError(f"{path}: cannot read as a PyTorch state dict ({exc})") from exc
    if not isinstance(source, Mapping):
        raise CheckpointError(f"expected a state dict (a mapping), got {type(source).__name__}")
    verify_checksum(source, f"weight file {source_name}")
    if "model" in source and isinstance(source["model"], Mapping):
        source = source["model"]
    return dict(source)


def load_state_dict_checked(
    model: nn.Module, state_dict: Mapping[str, Tensor], *, source=""
) -> None:
    """Load every key of ``model`` from ``state_dict``; any mismatch raises ``CheckpointError``.

    The error lists missing keys, unexpected keys and wrong shapes (never a silent partial load).
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [
        f"{key}: checkpoint {tuple(state_dict[key].shape)} vs model {tuple(own[key].shape)}"
        for key in sorted(set(own) & set(state_dict))
        if tuple(state_dict[key].shape) != tuple(own[key].shape)
    ]
    problems = []
    for title, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("wrong shapes", shapes),
    ):
        if items:
            problems.append(f"{title} ({len(items)}): " + ", ".join(items))
    if problems:
        where = f"{source}: " if source else ""
        raise CheckpointError(f"{where}state dict does not fit the model; " + "; ".join(problems))
    model.load_state_dict(state_dict, strict=True)
