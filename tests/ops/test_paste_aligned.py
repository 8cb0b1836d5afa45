"""``paste_masks_aligned`` (Detectron2's paste geometry) against ``F.grid_sample`` run directly:
each pixel centre normalised into its box, the M x M mask sampled bilinearly with zeros outside
(``align_corners=False``), only within the box grown by one pixel and clipped to the image."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from rcnn.ops.masks import paste_masks, paste_masks_aligned


def reference(masks: torch.Tensor, boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """float [N, H, W]: one mask at a time through ``grid_sample`` (0 outside the grown box)."""
    out = torch.zeros((len(masks), height, width))
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        xa, ya = max(math.floor(x0) - 1, 0), max(math.floor(y0) - 1, 0)
        xb, yb = min(math.ceil(x1) + 1, width), min(math.ceil(y1) + 1, height)
        if xb <= xa or yb <= ya:
            continue
        gx = (torch.arange(xa, xb) + 0.5 - x0) / (x1 - x0) * 2 - 1
        gy = (torch.arange(ya, yb) + 0.5 - y0) / (y1 - y0) * 2 - 1
        grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), -1)[None]
        sampled = F.grid_sample(masks[i][None, None], grid, align_corners=False)
        out[i, ya:yb, xa:xb] = sampled[0, 0]
    return out


def test_paste_aligned_equals_grid_sample():
    torch.manual_seed(0)
    masks = torch.rand(7, 28, 28)
    boxes = torch.tensor(
        [
            [10.3, 5.7, 60.2, 40.9],  # inside
            [-15.0, -8.5, 30.25, 22.0],  # over the top-left corner
            [70.5, 30.0, 140.0, 90.0],  # over the right and bottom edges
            [20.0, 20.0, 20.6, 50.0],  # thinner than a pixel
            [0.0, 0.0, 96.0, 64.0],  # the whole image
            [200.0, 10.0, 220.0, 30.0],  # outside
            [40.2, 12.1, 48.9, 17.3],  # smaller than the mask
        ]
    )
    expected = reference(masks, boxes, 64, 96)
    ours = paste_masks_aligned(masks, boxes, (64, 96), chunk=3)
    sure = (expected - 0.5).abs() > 1e-4  # float rounding decides exact halves
    assert sure.float().mean() > 0.99
    assert torch.equal(ours[sure], (expected >= 0.5)[sure])
    assert not ours[5].any() and ours[4].any()


def test_paste_aligned_differs_from_the_padded_integer_paste():
    # a mask of ones on a 28 px box (one cell per pixel): pixel x reads cell x - 10.4, cells
    # outside [0, 28) read 0. x = 10 reads 0.6 of cell 0 (kept), x = 9 nothing; x = 37 cells 26
    # and 27 (kept), x = 38 0.4 of cell 27 (dropped). torchvision's paste would grow the box by
    # the padding and truncate it to integers: 10..38 here
    masks = torch.ones(1, 28, 28)
    box = torch.tensor([[10.4, 10.4, 38.4, 38.4]])  # 28 px: one cell per pixel
    pasted = paste_masks_aligned(masks, box, (50, 50))[0]
    cols = torch.where(pasted.any(0))[0]
    # pixel x (centre x + 0.5) reads cell (x + 0.5 - 10.4) - 0.5 = x - 10.4: >= 0.5 from x = 10
    # (cell -0.4: 0.6 of cell 0) to x = 38 (cell 27.6: 0.4 of ... cell 27 weight 0.4 -> < 0.5)
    assert (cols.min().item(), cols.max().item()) == (10, 37)
    padded = paste_masks(masks, box, (50, 50))[0]
    cols = torch.where(padded.any(0))[0]
    assert (cols.min().item(), cols.max().item()) == (10, 38)
