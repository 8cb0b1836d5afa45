"""Undoing a training step that went non-finite: the last state known to be good, kept in memory.

``LastGoodState`` holds two copies of the training state (model weights and buffers, optimizer
state, scheduler, scaler, RNG, iteration, tracker): ``spare``, written at the start of every step,
and ``good``, the start of the last step whose forward passes all gave a finite loss. A step whose
loss is non-finite, or that leaves a non-finite weight, is undone by restoring ``good``, which is
then what the run saves. The copies are refreshed in place (``Tensor.copy_`` into buffers kept
from step to step), so the cost per step is two memory copies of the weights and optimizer state
and no allocation; the memory cost is two extra copies of them.

# deviation from gluoncv: GluonCV keeps training through NaN losses; Detectron2 raises
# FloatingPointError and keeps the weights as they are. Here the saved state is the last one
# that gave a finite loss, so a resume (after fixing the cause) starts from good weights.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from rcnn.engine.checkpoint import capture_rng, restore_rng


def _copy_into(old: Any, new: Any) -> Any:
    """A deep copy of ``new``, reusing ``old``'s tensors (same shape, dtype, device) in place."""
    if torch.is_tensor(new):
        same = (
            torch.is_tensor(old)
            and old.shape == new.shape
            and old.dtype == new.dtype
            and old.device == new.device
        )
        return old.copy_(new) if same else new.detach().clone()
    if isinstance(new, dict):
        previous = old if isinstance(old, dict) else {}
        return {key: _copy_into(previous.get(key), value) for key, value in new.items()}
    if isinstance(new, (list, tuple)):
        previous = (
            old if isinstance(old, (list, tuple)) and len(old) == len(new) else [None] * len(new)
        )
        return type(new)(_copy_into(o, v) for o, v in zip(previous, new, strict=True))
    return copy.deepcopy(new)


def _clone(tree: Any) -> Any:
    return _copy_into(None, tree)


def non_finite_tensors(model: nn.Module) -> list[str]:
    """Names of the floating-point parameters and buffers of ``model`` holding NaN or inf.

    One ``torch._foreach_norm(inf)`` (the largest magnitude of each tensor, NaN when any is NaN)
    and one host sync per call; names are only collected when something is wrong.
    """
    named = [
        (name, tensor)
        for name, tensor in (*model.named_parameters(), *model.named_buffers())
        if tensor.is_floating_point() and tensor.numel()
    ]
    if not named:
        return []
    norms = torch._foreach_norm([t.detach() for _, t in named], float("inf"))
    if bool(torch.isfinite(torch.stack([n.float() for n in norms])).all()):
        return []
    return [name for (name, _), n in zip(named, norms, strict=True) if not torch.isfinite(n)]


class LastGoodState:
    """The spare / good copies of the training state (see the module docstring)."""

    def __init__(self) -> None:
        self.spare: dict[str, Any] | None = None
        self.good: dict[str, Any] | None = None

    def start_step(self, loop: Any) -> None:
        """Copy the state at the start of a step into ``spare`` (``loop`` is the train loop)."""
        self.spare = _copy_into(
            self.spare,
            {
                "model": loop.model.state_dict(),
                "optimizer": loop.optimizer.state_dict(),
                "scheduler": loop.scheduler.state_dict(),
                "scaler": loop.scaler.state_dict(),
                "rng": capture_rng(),
                "iteration": loop.iteration,
                "tracker": dict(loop.tracker),
            },
        )

    def forward_was_finite(self) -> None:
        """The step's losses were finite: its starting state becomes the good one."""
        self.good, self.spare = self.spare, self.good

    def restore(self, loop: Any) -> int:
        """Put the good state (the step's start when none is yet) back into ``loop``; returns
        its iteration."""
        state = self.good if self.good is not None else self.spare
        assert state is not None, "start_step was never called"
        loop.model.load_state_dict(state["model"])
        loop.optimizer.load_state_dict(_clone(state["optimizer"]))
        loop.scheduler.load_state_dict(copy.deepcopy(state["scheduler"]))
        loop.scaler.load_state_dict(copy.deepcopy(state["scaler"]))
        restore_rng(state["rng"])
        loop.iteration = state["iteration"]
        loop.tracker.update(state["tracker"])
        return loop.iteration
