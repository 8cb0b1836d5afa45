"""Checkpoint files: atomic writes, clear errors for broken files, RNG round trip."""

from __future__ import annotations

import errno
import random
import re

import numpy as np
import pytest
import torch

from rcnn.engine import checkpoint as ckpt
from rcnn.errors import CheckpointError, OutputError


def _state(value: float) -> dict:
    return {"model": {"w": torch.full((3,), value)}, "config": {}, "class_names": ["a"]}


def test_crash_during_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    ckpt.save_checkpoint(path, _state(1.0))
    real_save = torch.save

    def crash_mid_write(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 half a zip")  # some bytes reach the temporary file
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", crash_mid_write)
    folder = re.escape(str(tmp_path))
    with pytest.raises(OutputError, match=f"^cannot write last.pth in folder {folder}: no space"):
        ckpt.save_checkpoint(path, _state(2.0))
    monkeypatch.setattr(torch, "save", real_save)
    loaded = ckpt.load_checkpoint(path)
    assert torch.equal(loaded["model"]["w"], torch.full((3,), 1.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]  # no temporary file left
    ckpt.save_checkpoint(path, _state(3.0))
    assert torch.equal(ckpt.load_checkpoint(path)["model"]["w"], torch.full((3,), 3.0))


def test_broken_files_raise_checkpoint_error(tmp_path):
    good = tmp_path / "good.pth"
    ckpt.save_checkpoint(good, _state(1.0))
    data = good.read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    foreign = tmp_path / "foreign.pth"
    torch.save({"state_dict": {}}, foreign)
    cases = {
        truncated: "is corrupt or truncated",
        garbage: "is corrupt or truncated",
        empty: "is empty",
        foreign: "missing model, config, class_names, format_version",
        tmp_path / "missing.pth": "does not exist",
    }
    for path, message in cases.items():
        with pytest.raises(CheckpointError, match=message) as info:
            ckpt.load_checkpoint(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_load_weights_names_mismatches():
    model = torch.nn.Linear(2, 3)
    weights = {"weight": torch.zeros(4, 2), "extra": torch.zeros(1)}
    with pytest.raises(CheckpointError) as info:
        ckpt.load_weights(model, weights, source="x.pth")
    text = str(info.value)
    assert "1 missing keys (e.g. bias)" in text
    assert "1 unexpected keys (e.g. extra)" in text
    assert "weight (4, 2) vs (3, 2)" in text


def test_rng_capture_restore_round_trip(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = ckpt.capture_rng()
    first = (random.random(), float(np.random.rand()), float(torch.rand(())))
    path = tmp_path / "rng.pth"
    ckpt.save_checkpoint(path, {**_state(0.0), "rng": state})
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    ckpt.restore_rng(ckpt.load_checkpoint(path)["rng"])  # through a weights_only load
    again = (random.random(), float(np.random.rand()), float(torch.rand(())))
    assert again == first


def _small_model_config(classes):
    from rcnn.models.config import ModelConfig

    cfg = ModelConfig(classes=tuple(classes))
    cfg.backbone.name, cfg.backbone.pretrained_base = "resnet18", False
    cfg.fpn.out_channels = 32
    cfg.box_head.fc_dim = 64
    return cfg


def test_load_model_rebuilds_from_the_config_and_rejects_mismatches(tmp_path):
    from rcnn.config import to_dict
    from rcnn.models.build import build_model

    torch.manual_seed(0)
    cfg = _small_model_config(["a", "b"])
    model = build_model(cfg)
    weights = model.state_dict()
    path = tmp_path / "m.pth"
    ckpt.save_checkpoint(
        path, {"model": weights, "config": {"model": to_dict(cfg)}, "class_names": ["a", "b"]}
    )
    loaded = ckpt.load_model(path)
    assert not loaded.training and list(loaded.class_names) == ["a", "b"]
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, weights[key]), key

    three = to_dict(_small_model_config(["a", "b", "c"]))
    bad = tmp_path / "bad.pth"
    ckpt.save_checkpoint(
        bad, {"model": weights, "config": {"model": three}, "class_names": ["a", "b", "c"]}
    )
    with pytest.raises(CheckpointError, match=f"weights in {bad} do not fit the model: .*shape"):
        ckpt.load_model(bad)
    renamed = tmp_path / "renamed.pth"
    ckpt.save_checkpoint(
        renamed, {"model": weights, "config": {"model": to_dict(cfg)}, "class_names": ["x", "y"]}
    )
    with pytest.raises(CheckpointError, match=r"class names \['x', 'y'\] do not match"):
        ckpt.load_model(renamed)
    odd = tmp_path / "odd.pth"
    config = {"model": {**to_dict(cfg), "wings": 2}}
    ckpt.save_checkpoint(odd, {"model": weights, "config": config, "class_names": ["a", "b"]})
    with pytest.raises(
        CheckpointError, match=r"its model config does not fit .*unknown key 'wings'"
    ):
        ckpt.load_model(odd)
