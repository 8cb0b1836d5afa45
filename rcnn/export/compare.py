"""Comparing an exported model's detections with the PyTorch model's (the ONNX contract's check,
used by tests/export and benchmarks/onnx_vs_torch.py)."""

from __future__ import annotations

import torch

from rcnn.models.rcnn import pad_batch, test_resize


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU [N] of bool masks [N, H, W] (1 where both are empty)."""
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))


def torch_mask_probs(model: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
    """PyTorch's mask probabilities [N, M, M] of ``model([image])``'s detections, in order
    (before pasting: to tell a moved paste window from a different mask)."""
    inp = model.cfg.input
    resized = test_resize(model.normalize(image), inp.test_short, inp.max_size)
    batch = pad_batch([resized], inp.size_divisibility)
    with torch.no_grad():
        feats = model.features(batch)
        proposals, _, _ = model.rpn(feats, tuple(batch.tensor.shape[-2:]), batch.image_sizes)
        (result,) = model.roi_heads.forward_test(feats, proposals, batch.image_sizes)
    return result.mask_probs
