"""``rcnn.models.rpn``: proposals, anchor targets and losses on hand-computed cases."""

from __future__ import annotations

import math

import torch

from rcnn.models.config import RPNConfig
from rcnn.models.rpn import anchor_targets, generate_proposals, rpn_losses
from rcnn.structures import RPNTargets, Targets

ANCHORS = torch.tensor(
    [
        [0.0, 0.0, 10.0, 10.0],  # logit 3: kept
        [1.0, 0.0, 11.0, 10.0],  # logit 2: IoU 90/110 = 0.82 with the first, suppressed by NMS
        [10.0, 10.0, 30.0, 30.0],  # logit 1: clipped to the image
        [0.0, 0.0, 0.0005, 5.0],  # logit 4, the best: narrower than min_size, dropped
        [5.0, 5.0, 15.0, 15.0],  # logit -5: not among the pre-NMS top 4
    ]
)
LOGITS = torch.tensor([[3.0, 2.0, 1.0, 4.0, -5.0]])


def proposals(pre: tuple[int, int], post: tuple[int, int], sizes, *, training: bool):
    cfg = RPNConfig(pre_nms_topk=pre, post_nms_topk=post, nms_thresh=0.7, min_size=1e-3)
    batch = len(sizes)
    logits = LOGITS.expand(batch, -1)
    deltas = torch.zeros(batch, len(ANCHORS), 4)  # proposals are the anchors themselves
    return generate_proposals([ANCHORS], [logits], [deltas], sizes, cfg=cfg, training=training)


def test_generate_proposals_topk_small_boxes_clip_and_nms():
    first, second = proposals((4, 4), (2, 2), [(20, 20), (12, 12)], training=True)
    torch.testing.assert_close(first.boxes, torch.tensor([[0.0, 0, 10, 10], [10, 10, 20, 20]]))
    torch.testing.assert_close(first.objectness, torch.tensor([3.0, 1.0]))  # logits, not probs
    torch.testing.assert_close(second.boxes, torch.tensor([[0.0, 0, 10, 10], [10, 10, 12, 12]]))
    (only,) = proposals((4, 4), (2, 1), [(20, 20)], training=False)  # test mode: post 1
    torch.testing.assert_close(only.boxes, torch.tensor([[0.0, 0, 10, 10]]))
    (none,) = proposals((4, 1), (2, 2), [(20, 20)], training=False)  # top 1 = the tiny box
    assert none.boxes.shape == (0, 4) and none.objectness.shape == (0,)


def test_anchor_targets_label_and_encode_one_image():
    anchors = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # IoU 1: positive
            [0.0, 0.0, 10.0, 12.0],  # IoU 100/120 = 0.83 >= 0.7: positive
            [0.0, 0.0, 10.0, 20.0],  # IoU 0.5, between 0.3 and 0.7: ignored
            [10.0, 10.0, 20.0, 20.0],  # IoU 0: negative
        ]
    )
    target = Targets(
        boxes=torch.tensor([[0.0, 0.0, 10.0, 10.0]]),
        labels=torch.tensor([0]),
        ignore=torch.tensor([False]),
        image_id=1,
        image_size=(20, 20),
        orig_size=(20, 20),
    )
    labels, box_targets = anchor_targets(anchors, [target], RPNConfig())
    assert labels.tolist() == [[1, 1, -1, 0]]
    # anchor 1: centre (5, 6), 10 x 12 -> ground truth centre (5, 5), 10 x 10 (weights 1)
    expected = torch.zeros(1, 4, 4)
    expected[0, 1] = torch.tensor([0.0, (5 - 6) / 12, 0.0, math.log(10 / 12)])
    torch.testing.assert_close(box_targets, expected)
    # targets attached by the data pipeline for these anchors are used as they are
    attached = RPNTargets(torch.tensor([0, 0, 0, 1]), torch.full((4, 4), 0.5), torch.ones(4, 4))
    target.rpn_targets = attached
    labels, box_targets = anchor_targets(anchors, [target], RPNConfig())
    assert labels.tolist() == [[0, 0, 0, 1]] and bool((box_targets == 0.5).all())
    # ... and ignored for another anchor set (a batch padded larger): computed again
    more = torch.cat([anchors, torch.tensor([[30.0, 30.0, 40.0, 40.0]])])
    labels, _ = anchor_targets(more, [target], RPNConfig())
    assert labels.tolist() == [[1, 1, -1, 0, 0]]


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_rpn_losses_by_hand():
    logits = torch.tensor([[0.0, 2.0, -1.0, 3.0]], requires_grad=True)
    labels = torch.tensor([[1, 0, -1, 1]])
    deltas = torch.tensor(
        [[[0.1, 0, 0, 0], [9.0, 9, 9, 9], [9.0, 9, 9, 9], [1.0, 0, 0, -0.5]]], requires_grad=True
    )  # rows 1 (negative) and 2 (not sampled) take no part in the box loss
    out = rpn_losses(logits, deltas, labels, box_targets=torch.zeros(1, 4, 4), beta=1 / 9)
    # BCE with logits over the 3 sampled anchors: softplus(-x) for positives, softplus(x) else
    cls = (softplus(-0.0) + softplus(2.0) + softplus(-3.0)) / 3
    # smooth L1 (beta 1/9): 0.5 x^2 / beta below beta, |x| - beta / 2 above; / 3 sampled
    box = (0.5 * 0.1**2 * 9 + (1 - 1 / 18) + (0.5 - 1 / 18)) / 3
    assert math.isclose(out["loss_rpn_cls"].item(), cls, rel_tol=1e-6)
    assert math.isclose(out["loss_rpn_box"].item(), box, rel_tol=1e-6)
    assert (out["rpn_num_pos"].item(), out["rpn_num_neg"].item()) == (2.0, 1.0)
    assert math.isclose(out["rpn_accuracy"].item(), 1 / 3, rel_tol=1e-6)  # only anchor 3 right


def test_rpn_losses_with_nothing_sampled_are_zero_with_gradients():
    logits = torch.randn(2, 5, requires_grad=True)
    deltas = torch.randn(2, 5, 4, requires_grad=True)
    labels = torch.full((2, 5), -1)
    out = rpn_losses(logits, deltas, labels, box_targets=torch.zeros(2, 5, 4), beta=1.0)
    assert out["loss_rpn_cls"].item() == 0.0 and out["loss_rpn_box"].item() == 0.0
    (out["loss_rpn_cls"] + out["loss_rpn_box"]).backward()
    assert logits.grad is not None and deltas.grad is not None  # in the graph (DDP)
