"""Small building blocks shared by the backbone, FPN and heads.

Shape shorthand: D channels.
"""

from __future__ import annotations

from functools import partial

from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

NORMS = ("", "frozen_bn", "bn", "gn", "syncbn")


def norm_factory(name: str, *, eps: float = 1e-5):
    """A callable ``channels -> nn.Module`` for norm ``name``, or None for ``""``."""
    if name not in NORMS:
        raise ValueError(f"unknown norm {name!r}; expected one of {NORMS}")
    if name == "":
        return None
    if name == "frozen_bn":
        return partial(FrozenBatchNorm2d, eps=eps)
    if name == "bn":
        return partial(nn.BatchNorm2d, eps=eps)
    if name == "syncbn":
        return partial(nn.SyncBatchNorm, eps=eps)
    return lambda channels: nn.GroupNorm(32, channels)


def conv_norm(
    in_channels: int, out_channels: int, kernel_size: int, *, norm: str = "", relu: bool = False
) -> nn.Sequential:
    """``Sequential(conv[, norm][, relu])``; the conv has a bias only without a norm.

    Module indices (0 conv, 1 norm) follow torchvision's ``Conv2dNormActivation`` so that its
    weights map one to one.
    """
    make_norm = norm_factory(norm)
    layers: list[nn.Module] = [
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            padding=kernel_size // 2,
            bias=make_norm is None,
        )
    ]
    if make_norm is not None:
        layers.append(make_norm(out_channels))
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d`` below ``module`` by a ``FrozenBatchNorm2d`` (in place).

    The frozen layers keep the statistics and affine parameters (as torchvision's detection
    builders do whenever weights are loaded). Returns ``module``.
    """
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(child, key).detach())
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)
    return module


def conv_stack(in_channels: int, dim: int, num: int, *, norm: str = "") -> nn.Sequential:
    """``num`` x (3x3 conv to ``dim`` [+ norm] + ReLU): the conv part of the 4conv1fc box head
    and of the FPN mask head."""
    return nn.Sequential(
        *(
            conv_norm(in_channels if i == 0 else dim, dim, 3, norm=norm, relu=True)
            for i in range(num)
        )
    )
