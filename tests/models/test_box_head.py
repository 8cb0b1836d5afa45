"""``rcnn.models.box_head.box_losses`` on a hand-computed case."""

from __future__ import annotations

import math

import torch

from rcnn.models.box_head import box_losses


def cross_entropy(logits: list[float], target: int) -> float:
    return math.log(sum(math.exp(v) for v in logits)) - logits[target]


def test_box_losses_by_hand():
    cls_logits = torch.tensor([[1.0, 0, 0], [1.0, 0, 2], [0.0, 3, 0]], requires_grad=True)
    gt_classes = torch.tensor([0, 2, 1])  # background, class 1 (column 2), class 0 (column 1)
    box_deltas = torch.tensor(
        [
            [7.0, 7, 7, 7, 7, 7, 7, 7],  # background: no box loss
            [9.0, 9, 9, 9, 0.5, 0, 0, 0],  # class 1: deltas 4..7 count
            [0.0, 0, 2, 0, 9, 9, 9, 9],  # class 0: deltas 0..3 count
        ],
        requires_grad=True,
    )
    out = box_losses(cls_logits, box_deltas, gt_classes, box_targets=torch.zeros(3, 4), beta=1.0)
    cls = (
        cross_entropy([1, 0, 0], 0) + cross_entropy([1, 0, 2], 2) + cross_entropy([0, 3, 0], 1)
    ) / 3
    box = (0.5 * 0.5**2 + (2 - 0.5)) / 3  # smooth L1, beta 1, over the 3 RoIs
    assert math.isclose(out["loss_rcnn_cls"].item(), cls, rel_tol=1e-6)
    assert math.isclose(out["loss_rcnn_box"].item(), box, rel_tol=1e-6)
    assert out["rcnn_num_pos"].item() == 2.0 and out["rcnn_accuracy"].item() == 1.0
    (out["loss_rcnn_cls"] + out["loss_rcnn_box"]).backward()
    assert bool((box_deltas.grad[0] == 0).all()) and bool((box_deltas.grad[1, :4] == 0).all())


def test_box_losses_of_no_roi_are_zero_with_gradients():
    cls_logits = torch.zeros(0, 3, requires_grad=True)
    box_deltas = torch.zeros(0, 8, requires_grad=True)
    out = box_losses(
        cls_logits, box_deltas, torch.zeros(0, dtype=torch.int64),
        box_targets=torch.zeros(0, 4), beta=1.0,
    )  # fmt: skip
    assert out["loss_rcnn_cls"].item() == 0.0 and out["loss_rcnn_box"].item() == 0.0
    (out["loss_rcnn_cls"] + out["loss_rcnn_box"]).backward()
    assert cls_logits.grad is not None and box_deltas.grad is not None
