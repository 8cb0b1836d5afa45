"""A small Mask R-CNN saved as a checkpoint and exported once (by `rcnn export`) per session."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from onnx_models import tiny_model

from rcnn.cli import main
from rcnn.config import to_dict
from rcnn.engine.checkpoint import save_checkpoint


@dataclass
class Exported:
    model: torch.nn.Module  # the PyTorch model, eval mode
    checkpoint: Path
    onnx: Path
    export_output: str  # what `rcnn export` printed


@pytest.fixture(scope="session")
def exported(tmp_path_factory) -> Exported:
    folder = tmp_path_factory.mktemp("exported")
    model = tiny_model(mask=True, arch="fpn")
    checkpoint = folder / "best.pth"
    state = {
        "model": model.state_dict(),
        "config": {"network": "tiny_fpn", "model": to_dict(model.cfg)},
        "class_names": list(model.class_names),
        "format_version": 1,
    }
    save_checkpoint(checkpoint, state)
    onnx = folder / "model.onnx"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["export", "--checkpoint", str(checkpoint), "--output", str(onnx)])
    assert code == 0, stdout.getvalue()
    return Exported(model, checkpoint, onnx, stdout.getvalue())
