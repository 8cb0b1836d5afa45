"""Small building blocks shared by the backbone, FPN and heads.

Shape shorthand: D channels.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

NORMS = ("", "frozen_bn", "bn", "gn", "syncbn")


class FrozenBN(FrozenBatchNorm2d):
    """torchvision's ``FrozenBatchNorm2d`` (same buffers and state-dict keys, same arithmetic
    ``x * scale + shift``) that can work in place on its input.

    With ``inplace=True`` (as ``nn.ReLU(inplace=True)``: only where the input is a temporary that
    nothing else reads, e.g. a conv's output) the two elementwise passes write into ``x`` instead
    of two new tensors: the same float operations in the same order, so outputs and gradients are
    bit-identical to torchvision's, with two fewer activation-sized allocations per layer. The
    backward needs only ``scale``, so autograd allows it on a conv output.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, *, inplace: bool = False) -> None:
        super().__init__(num_features, eps=eps)
        self.inplace = inplace

    def forward(self, x: Tensor) -> Tensor:
        """[B, D, H, W] -> [B, D, H, W]."""
        if not self.inplace or (x.is_leaf and x.requires_grad):
            return super().forward(x)
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x.mul_(scale.reshape(1, -1, 1, 1)).add_(shift.reshape(1, -1, 1, 1))

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + (", inplace=True)" if self.inplace else ")")


def norm_factory(name: str, *, eps: float = 1e-5):
    """A callable ``channels -> nn.Module`` for norm ``name``, or None for ``""``.

    Every norm of the models follows a conv, so frozen BN works in place (``FrozenBN``).
    """
    if name not in NORMS:
        raise ValueError(f"unknown norm {name!r}; expected one of {NORMS}")
    if name == "":
        return None
    if name == "frozen_bn":
        return partial(FrozenBN, eps=eps, inplace=True)
    if name == "bn":
        return partial(nn.BatchNorm2d, eps=eps)
    if name == "syncbn":
        return partial(nn.SyncBatchNorm, eps=eps)
    # 32 groups (Wu & He), or as many as divide a narrow layer's channels
    return lambda channels: nn.GroupNorm(math.gcd(32, channels), channels)


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


def float32_layer(layer: nn.Module, x: Tensor) -> Tensor:
    """``layer(x)`` computed in float32 even under autocast; elsewhere just ``layer(x)``.

    For the last layer of a head (objectness, class scores, box deltas, mask logits, mask IoU):
    in bf16 their outputs carry 8 mantissa bits, so scores 0.4% apart tie and reorder NMS and AP
    ranking; in float32 they cost a few percent of the head's work. Measured on the shapes demo
    model (AMD Zen 3, emulated bf16, 100 images): bf16 autocast moved box / mask AP by -0.0050 /
    -0.0063 with bf16 outputs, -0.0030 / -0.0042 with these layers in float32.
    """
    if not torch.is_autocast_enabled(x.device.type):
        return layer(x)
    with torch.autocast(x.device.type, enabled=False):
        return layer(x.float())
