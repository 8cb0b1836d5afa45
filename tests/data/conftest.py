"""Fixtures of the data tests: the shared sample datasets and tiny COCO files made on the fly."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared sample data not found at {SHARED_DATA}")
    return SHARED_DATA.resolve()


def write_image(path: Path, size=(40, 60), mode="RGB", value=120) -> Path:
    """A flat image of ``size`` (H, W) in ``mode``, saved by extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = size
    if mode in ("I;16", "I"):
        array = np.full((height, width), value * 257, dtype=np.uint16)
        Image.fromarray(array).save(path)
        return path
    Image.new(mode, (width, height), value if mode in ("L", "P") else (value,) * len(mode)).save(
        path
    )
    return path


def write_coco(root: Path, images: list[dict], annotations: list[dict], names=("a", "b")) -> Path:
    """``root/ann.json`` with ``images`` (file in ``root/images``) and categories 1..len(names)."""
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
    root.mkdir(parents=True, exist_ok=True)
    path = root / "ann.json"
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return path


def square(x, y, side):
    return [[x, y, x + side, y, x + side, y + side, x, y + side]]


@pytest.fixture
def files():
    """The file-making helpers of this module: ``files.image``, ``files.coco``, ``files.square``."""
    return SimpleNamespace(image=write_image, coco=write_coco, square=square)
