"""Fixtures of the example tests: each tutorial script run once as a subprocess, tiny settings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO / ".." / "shared" / "data"
# small-run knobs: tiny images, a ResNet-18 body, 32 RoIs, two SGD steps (a few seconds each)
TINY = [
    *("--short", "128", "--max-size", "192", "--backbone", "resnet18", "--rois", "32"),
    *("--steps", "2", "--num-workers", "0", "--no-pretrained-base", "--model-lines", "20"),
]


def run_script(script: str, data: Path, output: Path) -> SimpleNamespace:
    """Run ``examples/<script>`` on ``data``; its stdout, stderr and ``summary.json``."""
    command = [sys.executable, str(REPO / "examples" / script), "--data-root", str(data)]
    command += ["--output", str(output), *TINY]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    summary = json.loads((output / "summary.json").read_text())
    return SimpleNamespace(stdout=proc.stdout, stderr=proc.stderr, summary=summary, output=output)


def shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"shared sample data not found at {path}")
    return path.resolve()


@pytest.fixture(scope="session")
def raccoon() -> Path:
    return shared("raccoon")


@pytest.fixture(scope="session")
def balloon() -> Path:
    return shared("balloon")


@pytest.fixture(scope="session")
def voc_run(raccoon: Path, tmp_path_factory) -> SimpleNamespace:
    return run_script("train_faster_rcnn_voc.py", raccoon, tmp_path_factory.mktemp("voc"))


@pytest.fixture(scope="session")
def coco_run(balloon: Path, tmp_path_factory) -> SimpleNamespace:
    return run_script("train_mask_rcnn_coco.py", balloon, tmp_path_factory.mktemp("coco"))
