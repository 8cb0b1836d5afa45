"""Anchor generation per feature level, cached per feature size.

Shape shorthand: A anchors per location, L levels, H_l/W_l feature size of level l.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import torch
from torch import Tensor, nn

from rcnn.models.config import AnchorConfig

CACHE_SIZE = 64  # (level, feature size, stride, device) entries kept


def torchvision_cell_anchors(sizes: tuple[float, ...], ratios: tuple[float, ...]) -> Tensor:
    """[A, 4] anchors centred on 0: ``w = size / sqrt(r)``, ``h = size * sqrt(r)``, rounded.

    Ratio-major order (torchvision ``AnchorGenerator.generate_anchors``).
    """
    scales = torch.as_tensor(sizes, dtype=torch.float32)
    h_ratios = torch.sqrt(torch.as_tensor(ratios, dtype=torch.float32))
    w_ratios = 1 / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).view(-1)
    hs = (h_ratios[:, None] * scales[None, :]).view(-1)
    return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()


def gluoncv_cell_anchors(base_size: int, scales: tuple[float, ...], ratios: tuple[float, ...]):
    """[A, 4] anchors of GluonCV's ``RPNAnchorGenerator`` for the cell at the origin.

    ``ws = round(sqrt(base^2 / r))``, ``hs = round(ws * r)``; the box spans ``ws * s`` by
    ``hs * s`` pixels in the inclusive-pixel convention (``x2 - x1 = ws * s - 1``) around
    ``((base - 1) / 2, (base - 1) / 2)`` (7.5 for base 16, on every level). So GluonCV's shapes are
    ~ ``base * s / sqrt(r)`` by ``base * s * sqrt(r)``, rounded, and centred half a pixel off
    torchvision's (which centres on ``k * stride``). Ratio-major order.
    """
    centre = (base_size - 1) * 0.5
    out = []
    for ratio in ratios:
        for scale in scales:
            ws = np.round(np.sqrt(base_size * base_size / ratio))
            half_w = (ws * scale - 1) * 0.5
            half_h = (np.round(ws * ratio) * scale - 1) * 0.5
            out.append([centre - half_w, centre - half_h, centre + half_w, centre + half_h])
    return torch.tensor(out, dtype=torch.float32)


def detectron2_cell_anchors(sizes: tuple[float, ...], ratios: tuple[float, ...]) -> Tensor:
    """[A, 4] anchors centred on 0 as Detectron2's ``DefaultAnchorGenerator.generate_cell_anchors``:
    ``w = sqrt(size^2 / r)``, ``h = r * w`` (Python floats, not rounded), size-major order."""
    out = []
    for size in sizes:
        for ratio in ratios:
            width = math.sqrt(size**2.0 / ratio)
            height = ratio * width
            out.append([-width / 2.0, -height / 2.0, width / 2.0, height / 2.0])
    return torch.tensor(out, dtype=torch.float32)


def gluoncv_level_anchors(cfg: AnchorConfig, strides: tuple[int, ...]) -> list[Tensor]:
    """Cell anchors per level as GluonCV 0.11's ``RPNAnchorGenerator`` makes them.

    FPN: one scale per level; C4 (a single level): every scale on it (15 anchors). GluonCV 0.11
    (``generate_base_anchors``) builds each level's shapes on a ``stride x stride`` window with
    scales ``scale * base_size / stride``, centred on ``(stride - 1) / 2``: for stride 16 (C4, P4)
    this is the ``base_size`` formula, on the other FPN levels the centre and the rounding differ
    (checked against GluonCV in tests/models/test_gluoncv_fixtures.py).
    """
    if len(strides) == 1:
        per_level = [tuple(cfg.scales)]
    elif len(cfg.scales) == len(strides):
        per_level = [(scale,) for scale in cfg.scales]
    else:
        raise ValueError(f"anchors.scales has {len(cfg.scales)} levels, features {len(strides)}")
    return [
        gluoncv_cell_anchors(
            stride, tuple(s * cfg.base_size / stride for s in scales), cfg.aspect_ratios
        )
        for stride, scales in zip(strides, per_level, strict=True)
    ]


class AnchorGenerator(nn.Module):
    """Anchors of every level for a padded batch, cached per (level, feature size, device).

    Torchvision style: the stride of a level is ``padded_size // feature_size`` per axis
    (torchvision ``AnchorGenerator``: 57, not 64, for P6 of a 288-px input); GluonCV and
    Detectron2 styles: the nominal stride (Detectron2 shifts the grid by ``offset * stride``).
    """

    def __init__(self, cfg: AnchorConfig, strides: tuple[int, ...]) -> None:
        super().__init__()
        self.style = cfg.style
        self.strides = tuple(strides)
        if cfg.style == "torchvision":
            if len(cfg.sizes) != len(strides):
                raise ValueError(
                    f"anchors.sizes has {len(cfg.sizes)} levels, features {len(strides)}"
                )
            cells = [torchvision_cell_anchors(s, cfg.aspect_ratios) for s in cfg.sizes]
        elif cfg.style == "gluoncv":
            cells = gluoncv_level_anchors(cfg, self.strides)
        elif cfg.style == "detectron2":
            if len(cfg.sizes) != len(strides):
                raise ValueError(
                    f"anchors.sizes has {len(cfg.sizes)} levels, features {len(strides)}"
                )
            cells = [detectron2_cell_anchors(s, cfg.aspect_ratios) for s in cfg.sizes]
        else:
            raise ValueError(
                f"anchors.style must be 'torchvision', 'gluoncv' or 'detectron2', got {cfg.style!r}"
            )
        self.offset = cfg.offset if cfg.style == "detectron2" else 0.0
        self.cell_anchors = cells
        self.num_anchors = len(cells[0])
        # bounded LRU: multi-scale training meets many padded sizes (P2 of 800x1333 is ~3 MB)
        self._cache: OrderedDict[tuple, Tensor] = OrderedDict()

    def _level_stride(self, level: int, grid: tuple[int, int], image_size: tuple[int, int]):
        if self.style == "torchvision":
            return image_size[0] // grid[0], image_size[1] // grid[1]
        return self.strides[level], self.strides[level]

    def _grid_anchors(self, level: int, grid: tuple[int, int], stride: tuple[int, int], device):
        key = (level, grid, stride, str(device))
        if key not in self._cache:
            ys = (torch.arange(grid[0], dtype=torch.float32, device=device) + self.offset) * stride[
                0
            ]
            xs = (torch.arange(grid[1], dtype=torch.float32, device=device) + self.offset) * stride[
                1
            ]
            yy, xx = torch.meshgrid(ys, xs, indexing="ij")
            shifts = torch.stack([xx, yy, xx, yy], dim=-1).reshape(-1, 1, 4)
            cell = self.cell_anchors[level].to(device)
            self._cache[key] = (shifts + cell[None]).reshape(-1, 4)
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        self._cache.move_to_end(key)
        return self._cache[key]

    def forward(self, features: list[Tensor], image_size: tuple[int, int]) -> list[Tensor]:
        """Anchors [H_l * W_l * A, 4] per level (location-major, anchor-minor) for a padded size."""
        out = []
        for level, feature in enumerate(features):
            grid = (int(feature.shape[-2]), int(feature.shape[-1]))
            stride = self._level_stride(level, grid, image_size)
            out.append(self._grid_anchors(level, grid, stride, feature.device))
        return out
