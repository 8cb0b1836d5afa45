"""Mask Scoring R-CNN exported: the graph's scores are class score x the MaskIoU head's predicted
IoU, re-sorted, as ``RoIHeads.mask_test`` gives them in eval and predict."""

from __future__ import annotations

import torch
from onnx_models import BALLOON, FRUITS, assert_same, photo, tiny_model

from rcnn.export.compare import torch_mask_probs
from rcnn.export.onnx import export_onnx
from rcnn.export.runtime import OnnxDetector


def test_mask_scoring_export_matches_pytorch(tmp_path):
    model = tiny_model(mask=True, maskiou=True)
    path = export_onnx(model, tmp_path / "ms.onnx", preset="tiny_ms")
    images = [photo(FRUITS, (160, 200)), photo(BALLOON, (160, 200))]
    with torch.no_grad():
        refs = model(images)
    detector = OnnxDetector(path, threads=2)
    for image, ref, batched in zip(images, refs, detector(images), strict=True):
        probs = torch_mask_probs(model, image)
        assert_same(detector([image])[0], ref, probs)
        assert_same(batched, ref, probs)
    head = model.roi_heads.maskiou_head
    model.roi_heads.maskiou_head = None  # the same weights without it: the class scores
    with torch.no_grad():
        plain = model(images)
    model.roi_heads.maskiou_head = head
    for ref, class_scores in zip(refs, plain, strict=True):
        # rescored (by IoUs around 0.5, not 1) and re-sorted: another order than the class scores'
        assert ref.scores.sum() < 0.8 * class_scores.scores.sum()
        assert not torch.equal(ref.labels, class_scores.labels)
