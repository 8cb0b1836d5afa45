"""Checksums of checkpoint contents: flipped bytes in a saved state are caught when it is read.

torch's zip-based format checks no data of its own (a byte flipped inside a tensor loads as a
different number), so ``rcnn.engine.checkpoint.save_checkpoint`` stores ``state_checksum`` in the
state and every reader of our checkpoints calls ``verify_checksum``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import torch

from rcnn.errors import CheckpointError


def state_checksum(state: dict[str, Any]) -> str:
    """``sha256:<hex>`` over every key, plain value and tensor (dtype, shape, bytes) of
    ``state`` in a fixed order (the ``checksum`` entry itself left out).

    A checkpoint stores it and ``load_checkpoint`` recomputes it, so flipped bytes anywhere in the
    tensor data or the values are caught (torch's zip format checks no data itself).
    """
    digest = hashlib.sha256()
    _hash_tree(digest, {k: v for k, v in state.items() if k != "checksum"})
    return "sha256:" + digest.hexdigest()


def _hash_tree(digest: Any, value: Any) -> None:
    if isinstance(value, dict):
        digest.update(b"{")
        for key in sorted(value, key=repr):
            digest.update(repr(key).encode() + b":")
            _hash_tree(digest, value[key])
        digest.update(b"}")
    elif isinstance(value, (list, tuple)):
        digest.update(b"[")
        for item in value:
            _hash_tree(digest, item)
        digest.update(b"]")
    elif torch.is_tensor(value):
        tensor = value.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"T{tensor.dtype}{tuple(value.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().data)
    else:
        digest.update(repr(value).encode())


def verify_checksum(state: Mapping[str, Any], what: str) -> None:
    """Raise ``CheckpointError`` naming ``what`` when ``state`` holds a ``checksum`` that its
    content does not match (a state without one, written before checksums, passes)."""
    stored = state.get("checksum")
    if stored is not None and stored != state_checksum(dict(state)):
        raise CheckpointError(
            f"{what} is corrupt: its content does not match its checksum "
            "(flipped bytes on disk or in transfer); use another checkpoint"
        )
