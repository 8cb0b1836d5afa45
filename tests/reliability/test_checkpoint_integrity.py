"""Checkpoints verify themselves: flipped tensor bytes are a one-line error for every reader."""

from __future__ import annotations

import pytest
import torch
from reliability_files import flip_tensor_bytes

from rcnn.engine.checkpoint import load_checkpoint, save_checkpoint
from rcnn.errors import CheckpointError
from rcnn.integrity import state_checksum
from rcnn.weights import read_state_dict


def _state() -> dict:
    generator = torch.Generator().manual_seed(0)
    return {
        "model": {"w": torch.randn(64, 64, generator=generator), "n": torch.tensor(3)},
        "config": {"lr": 0.01},
        "class_names": ["a"],
        "metrics": {"bbox": {"AP": float("nan")}},
    }


def test_flipped_bytes_are_caught_by_every_reader(tmp_path):
    good, bad = tmp_path / "good.pth", tmp_path / "bad.pth"
    save_checkpoint(good, _state())
    loaded = load_checkpoint(good)
    assert loaded["checksum"] == state_checksum(loaded)  # stable through a save / load
    flip_tensor_bytes(good, bad)
    raw = torch.load(bad, weights_only=True)  # torch itself reads it without a word
    assert not torch.equal(raw["model"]["w"], loaded["model"]["w"])
    with pytest.raises(CheckpointError, match=f"^checkpoint {bad} is corrupt: its content"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match=f"^weight file {bad} is corrupt"):
        read_state_dict(bad)


def test_a_change_anywhere_changes_the_checksum():
    base = state_checksum(_state())
    changed = _state()
    changed["model"]["w"][3, 5] += 1e-6
    assert state_checksum(changed) != base
    renamed = _state()
    renamed["class_names"] = ["b"]
    assert state_checksum(renamed) != base
    as_double = _state()
    as_double["model"]["n"] = torch.tensor(3.0)
    assert state_checksum(as_double) != base


def test_checkpoints_without_a_checksum_still_load(tmp_path):
    path = tmp_path / "old.pth"
    torch.save({**_state(), "format_version": 1}, path)
    assert load_checkpoint(path)["class_names"] == ["a"]
