"""Mask targets per RoI (from polygons or RLE) and pasting of RoI masks into full images.

Shape shorthand: R RoIs, N instances, M mask side, H/W image height/width.
"""

from __future__ import annotations

import numpy as np
import pycocotools.mask as mask_util
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

from rcnn.structures import InstanceMask, is_rle


def instance_bitmap(mask: InstanceMask, height: int, width: int) -> np.ndarray:
    """uint8 ``[H, W]`` 0/1 bitmap of one instance's polygons (merged) or RLE (pycocotools)."""
    if not is_rle(mask):
        mask = mask_util.merge(mask_util.frPyObjects([p.tolist() for p in mask], height, width))
    return mask_util.decode(mask)


def rasterize_polygons_in_box(polygons: list[np.ndarray], box: np.ndarray, size: int) -> np.ndarray:
    """Crop ``polygons`` (flat [x0, y0, ...] in image pixels) to ``box`` and rasterise at M x M.

    The polygon is shifted and scaled into the box's frame before rasterising, so no full-image
    bitmap is made (Detectron2 ``rasterize_polygons_within_box``).

    Returns:
        uint8 [M, M] (0/1).
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    scale_x = size / max(x1 - x0, 0.1)
    scale_y = size / max(y1 - y0, 0.1)
    scaled = []
    for poly in polygons:
        poly = np.asarray(poly, dtype=np.float64).reshape(-1)
        if poly.size < 6:
            continue
        out = poly.copy()
        out[0::2] = (poly[0::2] - x0) * scale_x
        out[1::2] = (poly[1::2] - y0) * scale_y
        scaled.append(out)
    if not scaled:
        return np.zeros((size, size), dtype=np.uint8)
    rle = mask_util.merge(mask_util.frPyObjects(scaled, size, size))
    return mask_util.decode(rle)


def _rle_targets(rle: dict, rois: Tensor, size: int) -> Tensor:
    """[R, M, M] float targets of one RLE instance: its bitmap RoIAligned into each RoI."""
    bitmap = torch.from_numpy(mask_util.decode(rle)).to(rois.device, torch.float32)
    index = rois.new_zeros((len(rois), 1))
    aligned = roi_align(bitmap[None, None], torch.cat([index, rois], 1), (size, size), 1.0, 0, True)
    return (aligned[:, 0] >= 0.5).float()


def mask_targets(
    gt_masks: list[InstanceMask], matched: Tensor, rois: Tensor, *, size: int
) -> Tensor:
    """Training targets of the mask head.

    Args:
        gt_masks: one polygon list or RLE dict per ground-truth instance (image pixels).
        matched: int64 [R] index of each foreground RoI's ground truth.
        rois: float [R, 4] foreground RoIs (image pixels).
        size: M.

    Returns:
        float [R, M, M] of 0/1 on ``rois.device``.
    """
    out = torch.zeros((len(rois), size, size), dtype=torch.float32, device=rois.device)
    if len(rois) == 0:
        return out
    matched_np = matched.cpu().numpy()
    rois_np = rois.detach().cpu().numpy()
    for gt_index in np.unique(matched_np):
        rows = np.nonzero(matched_np == gt_index)[0]
        mask = gt_masks[int(gt_index)]
        if is_rle(mask):
            out[torch.from_numpy(rows).to(out.device)] = _rle_targets(mask, rois[rows], size)
            continue
        crops = [rasterize_polygons_in_box(mask, rois_np[r], size) for r in rows]
        out[torch.from_numpy(rows).to(out.device)] = torch.from_numpy(np.stack(crops)).to(
            out.device, torch.float32
        )
    return out


def bilinear_taps(
    start: Tensor, length: Tensor, src_size: int, out_size
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Where each output pixel reads a ``src_size`` source resampled onto ``length`` pixels.

    Pixel ``start + k`` (0 <= k < length) reads the source at ``(k + 0.5) * src / length - 0.5``
    (clamped at 0, edge-replicated): the arithmetic of ``F.interpolate(mode="bilinear",
    align_corners=False)``. Shared by the paste here and the exported graph's (``rcnn.export``).

    Returns:
        ``(inside, low, high, frac)``, each [N, out]: 1.0 for pixels in ``[start, start +
        length)`` (else 0), the two source taps and the weight of ``high``.
    """
    pos = torch.arange(out_size, device=start.device)
    rel = pos[None, :] - start[:, None]
    inside = ((rel >= 0) & (rel < length[:, None])).float()
    scale = src_size / length.float()
    src = ((rel.float() + 0.5) * scale[:, None] - 0.5).clamp(min=0)
    low = src.floor().long().clamp(max=src_size - 1)
    high = (low + 1).clamp(max=src_size - 1)
    return inside, low, high, src - low.float()


def _interp_weights(start: Tensor, length: Tensor, src_size: int, out_size: int) -> Tensor:
    """Bilinear resampling weights [N, out, src] (``bilinear_taps``); rows outside
    ``[start, start + length)`` are 0."""
    inside, low, high, frac = bilinear_taps(start, length, src_size, out_size)
    weights = torch.zeros((len(start), out_size, src_size), device=start.device)
    weights.scatter_add_(2, low[..., None], ((1 - frac) * inside)[..., None])
    weights.scatter_add_(2, high[..., None], (frac * inside)[..., None])
    return weights


def _paste_window(
    padded: Tensor, grown: Tensor, box_w: Tensor, box_h: Tensor, out: Tensor, threshold: float
) -> None:
    """Paste a chunk of padded masks [n, M', M'] into ``out`` [n, H, W] (bool, in place).

    Only the window of each box that lies inside the image is computed (a common [n, h, w]
    window, h/w the largest clipped box), then scattered into the image.
    """
    height, width = out.shape[-2:]
    x0, y0 = grown[:, 0].clamp(0, width), grown[:, 1].clamp(0, height)
    x1 = (grown[:, 0] + box_w).clamp(0, width)
    y1 = (grown[:, 1] + box_h).clamp(0, height)
    win_h, win_w = int((y1 - y0).max()), int((x1 - x0).max())
    if win_h == 0 or win_w == 0:
        return
    # window pixel r is image row y0 + r, i.e. row r - (grown_y0 - y0) of the resized box
    rows = _interp_weights(grown[:, 1] - y0, box_h, padded.shape[-2], win_h)
    cols = _interp_weights(grown[:, 0] - x0, box_w, padded.shape[-1], win_w)
    # columns first, then rows: the grouping of upsample_bilinear2d (exact ties at 0.5 agree)
    local = torch.bmm(rows, torch.bmm(padded, cols.transpose(1, 2))) > threshold
    _place_windows(local, out, (y0, x0, y1, x1))


def _place_windows(local: Tensor, out: Tensor, corners: tuple[Tensor, ...]) -> None:
    """Each window's clipped corner of ``local`` [n, h, w] into ``out`` [n, H, W] at image rows
    ``y0..y1``, columns ``x0..x1`` (``corners`` = (y0, x0, y1, x1), each [n]); slice copies: no
    index tensors over the n x h x w pixels."""
    y0, x0, y1, x1 = corners
    rows = torch.stack((y0, x0, (y1 - y0).clamp(min=0), (x1 - x0).clamp(min=0)), 1).tolist()
    for i, (top, left, h, w) in enumerate(rows):
        out[i, top : top + h, left : left + w] = local[i, :h, :w]


def paste_windows(boxes: Tensor, mask_size: int, *, padding: int = 1) -> Tensor:
    """int64 [N, 4]: the pixel window each of boxes [N, 4] gets its mask pasted into: the box
    grown by ``(M + 2 * padding) / M`` about its centre, truncated toward zero (torchvision's
    ``expand_boxes`` + ``int``). A box coordinate that crosses an integer there moves its mask by
    a pixel, however little the box moved."""
    scale = (mask_size + 2 * padding) / mask_size
    half_w = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    half_h = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    ctr_x = (boxes[:, 2] + boxes[:, 0]) * 0.5
    ctr_y = (boxes[:, 3] + boxes[:, 1]) * 0.5
    grown = torch.stack((ctr_x - half_w, ctr_y - half_h, ctr_x + half_w, ctr_y + half_h), 1)
    return grown.to(torch.int64)  # truncation toward zero, as torchvision


def paste_masks(
    masks: Tensor,
    boxes: Tensor,
    image_size: tuple[int, int],
    *,
    threshold: float = 0.5,
    padding: int = 1,
    chunk: int = 32,
) -> Tensor:
    """Paste M x M mask probabilities into their boxes of a full image, batched.

    The mask is zero-padded by ``padding``, its box grown by ``(M + 2p) / M``, truncated to integer
    pixels and the mask bilinearly resized onto it: torchvision's ``paste_masks_in_image``, done as
    batched matrix products (separable bilinear weights) over box windows instead of a loop over
    masks. Boxes partly or wholly outside the image are fine.

    Args:
        masks: float [N, M, M] probabilities.
        boxes: float [N, 4] in the target image's pixels.
        image_size: (H, W).
        chunk: masks per batched product (bounds the memory of the windows).

    Returns:
        bool [N, H, W] (probability > ``threshold``).
    """
    height, width = image_size
    num, size = masks.shape[0], masks.shape[-1]
    out = torch.zeros((num, height, width), dtype=torch.bool, device=masks.device)
    if num == 0 or height == 0 or width == 0:
        return out
    padded = F.pad(masks.float(), (padding,) * 4)
    grown = paste_windows(boxes, size, padding=padding)
    box_w = (grown[:, 2] - grown[:, 0] + 1).clamp(min=1)
    box_h = (grown[:, 3] - grown[:, 1] + 1).clamp(min=1)
    for lo in range(0, num, chunk):
        sl = slice(lo, lo + chunk)
        _paste_window(padded[sl], grown[sl], box_w[sl], box_h[sl], out[sl], threshold)
    return out


def _cell_weights(start: Tensor, low: Tensor, high: Tensor, size: int, out_size: int) -> Tensor:
    """Weights [N, out, size] sampling a ``size``-cell mask, zero outside it, for window pixels
    ``start + k`` of boxes spanning ``[low, high)`` (continuous coordinates).

    Pixel centre ``x + 0.5`` reads the mask at ``(x + 0.5 - low) * size / (high - low) - 0.5``
    (cell centres at half-pixel positions, as RoIAlign with ``aligned=True``); taps outside
    ``[0, size)`` read 0, so the mask fades out over the half cell beyond the box.
    """
    pixels = start[:, None] + torch.arange(out_size, device=start.device)[None, :]
    extent = (high - low).clamp(min=1e-6)
    pos = (pixels.float() + 0.5 - low[:, None]) * (size / extent)[:, None] - 0.5
    left = pos.floor()
    frac = pos - left
    left = left.clamp(-2, size).long()  # far-away taps: any index outside [0, size) reads 0
    weights = torch.zeros((len(start), out_size, size + 4), device=start.device)
    weights.scatter_add_(2, (left + 2)[..., None], (1 - frac)[..., None])
    weights.scatter_add_(2, (left + 3)[..., None], frac[..., None])
    return weights[..., 2 : size + 2]


def _paste_aligned_chunk(masks: Tensor, boxes: Tensor, out: Tensor, threshold: float) -> None:
    """``paste_masks_aligned`` of a chunk: masks [n, M, M], boxes [n, 4] into ``out`` [n, H, W]."""
    height, width = out.shape[-2:]
    size = masks.shape[-1]
    x0 = (boxes[:, 0].floor() - 1).clamp(min=0).long()
    y0 = (boxes[:, 1].floor() - 1).clamp(min=0).long()
    x1 = (boxes[:, 2].ceil() + 1).clamp(max=width).long()
    y1 = (boxes[:, 3].ceil() + 1).clamp(max=height).long()
    win_w, win_h = int((x1 - x0).clamp(min=0).max()), int((y1 - y0).clamp(min=0).max())
    if win_w == 0 or win_h == 0:
        return
    rows = _cell_weights(y0, boxes[:, 1], boxes[:, 3], size, win_h)
    cols = _cell_weights(x0, boxes[:, 0], boxes[:, 2], size, win_w)
    local = torch.bmm(rows, torch.bmm(masks, cols.transpose(1, 2))) >= threshold
    _place_windows(local, out, (y0, x0, y1, x1))


def paste_masks_aligned(
    masks: Tensor,
    boxes: Tensor,
    image_size: tuple[int, int],
    *,
    threshold: float = 0.5,
    chunk: int = 32,
) -> Tensor:
    """Paste M x M mask probabilities into their boxes with half-pixel (``aligned``) geometry.

    Each image pixel's centre is located inside its box and the mask bilinearly sampled there,
    the M x M cells spread evenly over the box and zero outside (no padded border, no integer
    box): the semantics of Detectron2's ``paste_masks_in_image`` (its ``grid_sample`` paste as
    run on the CPU: each mask within its box grown by one pixel, clipped to the image). Kept
    where the probability is ``>= threshold``.

    Args:
        masks: float [N, M, M] probabilities.
        boxes: float [N, 4] in the target image's pixels.
        image_size: (H, W).
        chunk: masks per batched product (bounds the memory of the windows).

    Returns:
        bool [N, H, W].
    """
    height, width = image_size
    out = torch.zeros((masks.shape[0], height, width), dtype=torch.bool, device=masks.device)
    if height == 0 or width == 0:
        return out
    for lo in range(0, masks.shape[0], chunk):
        sl = slice(lo, lo + chunk)
        _paste_aligned_chunk(masks[sl].float(), boxes[sl].float(), out[sl], threshold)
    return out
