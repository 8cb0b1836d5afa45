"""LR schedule values against hand-computed numbers; parameter groups."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rcnn.engine.optim import WarmupScheduler, build_optimizer, lr_factor, param_groups


@pytest.mark.parametrize(
    ("iteration", "expected"),
    [
        # warmup 100 iters from 1/3: lr = 0.02 * (1/3 * (1 - i/100) + i/100)
        (0, 0.02 / 3),
        (50, 0.02 * (1 / 3 * 0.5 + 0.5)),  # 0.013333...
        (99, 0.02 * (1 / 3 * 0.01 + 0.99)),
        (100, 0.02),
        (999, 0.02),
        (1000, 0.002),  # first milestone: x0.1
        (1499, 0.002),
        (1500, 0.0002),  # second milestone
    ],
)
def test_warmup_then_step(iteration, expected):
    factor = lr_factor(
        iteration,
        max_iters=2000,
        warmup_iters=100,
        warmup_factor=1 / 3,
        milestones=[1000, 1500],
        decay=0.1,
    )
    assert 0.02 * factor == pytest.approx(expected, rel=1e-12)


def test_cosine_and_no_warmup():
    def cos(i):
        return lr_factor(i, max_iters=100, schedule="cosine")

    assert cos(0) == 1.0
    assert cos(50) == pytest.approx(0.5)
    assert cos(25) == pytest.approx((1 + math.cos(math.pi / 4)) / 2)
    assert cos(100) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(0, max_iters=10, warmup_iters=0, milestones=[5]) == 1.0
    assert lr_factor(5, max_iters=10, warmup_iters=-1, milestones=[5]) == pytest.approx(0.1)


def test_scheduler_sets_the_groups_and_resumes():
    model = nn.Linear(2, 2)
    opt = build_optimizer(model, lr=0.3, momentum=0.9, wd=1e-4)
    sched = WarmupScheduler(opt, max_iters=10, warmup_iters=4, warmup_factor=0.25, milestones=[6])
    seen = []
    for _ in range(8):
        seen.append(opt.param_groups[0]["lr"])
        sched.step()
    # warmup: 0.3 * (0.25 + 0.75 * i / 4) for i < 4, then 0.3, then 0.03 from iteration 6
    hand = [0.075, 0.13125, 0.1875, 0.24375, 0.3, 0.3, 0.03, 0.03]
    assert seen == pytest.approx(hand)
    opt2 = build_optimizer(model, lr=0.3, momentum=0.9, wd=1e-4)
    sched2 = WarmupScheduler(opt2, max_iters=10, warmup_iters=4, warmup_factor=0.25, milestones=[6])
    sched2.load_state_dict(sched.state_dict())
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.03)


def test_param_groups_without_decay_on_bias_and_norm():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2))
    model[0].weight.requires_grad_(False)  # a frozen stage is left out
    groups = param_groups(model, wd=1e-4, wd_bias_norm=False)
    decay = {id(p) for p in groups[0]["params"]}
    no_decay = {id(p) for p in groups[1]["params"]}
    assert decay == {id(model[2].weight)}
    assert no_decay == {
        id(model[0].bias),
        id(model[1].weight),
        id(model[1].bias),
        id(model[2].bias),
    }
    assert groups[1]["weight_decay"] == 0.0
    together = param_groups(model, wd=1e-4)
    assert len(together) == 1 and len(together[0]["params"]) == 5
    assert isinstance(build_optimizer(model, lr=0.1, momentum=0.9, wd=0.0), torch.optim.SGD)
