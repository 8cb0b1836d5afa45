"""SGD with parameter groups and the learning-rate schedule (linear warmup, then step or cosine).

The schedule is a pure function of the iteration (``lr_factor``), so resuming only needs the
iteration number; ``WarmupScheduler`` wraps it with a ``state_dict`` for the checkpoint.
GluonCV's warmup (``train_mask_rcnn.py``): ``lr = base * (f * (1 - a) + a)`` with
``a = it / warmup`` and ``f = 1/3``, by global iteration; step decay multiplies by ``lr_decay``
at each milestone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def param_groups(model: nn.Module, *, wd: float, wd_bias_norm: bool = True) -> list[dict]:
    """Trainable parameters in one group, or two when biases and norm weights get no decay.

    Args:
        model: the model (parameters with ``requires_grad=False`` are left out: frozen stages).
        wd: weight decay of the weights.
        wd_bias_norm: also decay biases and normalisation weights (GluonCV's Faster R-CNN does;
            its Mask R-CNN script sets ``wd_mult=0`` on biases: use False for that).
    """
    decay, no_decay = [], []
    for module in model.modules():
        is_norm = isinstance(module, _NORM_TYPES)
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            skip = not wd_bias_norm and (is_norm or name == "bias")
            (no_decay if skip else decay).append(param)
    groups = [{"params": decay, "weight_decay": wd}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def build_optimizer(
    model: nn.Module, *, lr: float, momentum: float, wd: float, wd_bias_norm: bool = True
) -> torch.optim.SGD:
    """SGD with momentum over ``param_groups(model)``."""
    groups = param_groups(model, wd=wd, wd_bias_norm=wd_bias_norm)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return torch.optim.SGD(groups, lr=lr, momentum=momentum)


def lr_factor(
    iteration: int,
    *,
    max_iters: int,
    warmup_iters: int = 0,
    warmup_factor: float = 1.0 / 3.0,
    schedule: str = "step",
    milestones: Sequence[int] = (),
    decay: float = 0.1,
) -> float:
    """The multiplier of the base learning rate at ``iteration`` (0-based, before its step).

    Args:
        iteration: the optimizer step about to be taken.
        max_iters: total steps (cosine decays to 0 at ``max_iters``).
        warmup_iters: linear warmup length; ``<= 0`` disables it.
        warmup_factor: the factor at iteration 0.
        schedule: ``"step"`` (times ``decay`` at each milestone reached) or ``"cosine"``.
        milestones: iterations where the step schedule decays.
        decay: the step schedule's multiplier.
    """
    if schedule == "cosine":
        progress = min(iteration, max_iters) / max(1, max_iters)
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        factor = decay ** sum(1 for m in milestones if iteration >= m)
    if warmup_iters > 0 and iteration < warmup_iters:
        alpha = iteration / warmup_iters
        factor *= warmup_factor * (1.0 - alpha) + alpha
    return factor


class WarmupScheduler:
    """Sets each group's lr to ``base_lr * lr_factor(iteration)``; ``step()`` after each update."""

    def __init__(self, optimizer: torch.optim.Optimizer, **schedule: Any) -> None:
        self.optimizer = optimizer
        self.schedule = schedule
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.iteration = 0
        self._apply()

    def _apply(self) -> None:
        factor = lr_factor(self.iteration, **self.schedule)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * factor

    def step(self) -> None:
        self.iteration += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"iteration": self.iteration, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.iteration = int(state["iteration"])
        self.base_lrs = [float(lr) for lr in state["base_lrs"]]
        self._apply()
