"""Fixtures of the model tests: real images from the shared sample data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def read_image(path: Path, max_side: int | None = None) -> torch.Tensor:
    """uint8 [3, H, W] RGB (optionally downscaled so the long side is ``max_side``)."""
    image = Image.open(path).convert("RGB")
    if max_side is not None and max(image.size) > max_side:
        scale = max_side / max(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)))
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).contiguous()


@pytest.fixture(scope="session")
def real_images() -> list[torch.Tensor]:
    """Two real photos of different sizes (fruits_nuts and balloon photos, downscaled)."""
    return [
        read_image(DATA / "fruits_nuts" / "images" / "0.jpg", max_side=400),
        read_image(DATA / "balloon" / "val2017" / "14898532020_ba6199dd22_k.jpg", max_side=330),
    ]
