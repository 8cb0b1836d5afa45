"""GluonCV's ResNet-v1d as a small modification of torchvision's ResNet.

Shape shorthand: B images, D channels, H/W input size.

torchvision's ResNet is GluonCV's v1b already (stride 2 on the 3x3 conv of a bottleneck). v1d
(He et al. 2019, "Bag of Tricks for Image Classification", sec. 4.2, ResNet-D; GluonCV
``resnetv1b.py`` with ``deep_stem=True, avg_down=True``) changes two things:

- the 7x7 stem conv becomes three 3x3 convs (32, 32, 64 channels; the first with stride 2), with
  norm + ReLU between them (``conv1`` is now a ``Sequential``; ``bn1`` and the max-pool stay);
- every shortcut that changes shape average-pools first (``kernel = stride``, ``ceil_mode``,
  padding not counted) and then applies a stride-1 1x1 conv, instead of a strided 1x1 conv.
"""

from __future__ import annotations

from collections.abc import Callable

import torchvision.models.resnet as tv_resnet
from torch import nn

STEM_WIDTH = 32


def deep_stem(make_norm: Callable[[int], nn.Module], out_channels: int = 64) -> nn.Sequential:
    """3x3 s2 conv(32) + norm + ReLU, 3x3 conv(32) + norm + ReLU, 3x3 conv(``out_channels``).

    The norm + ReLU after the last conv are the ResNet's own ``bn1`` / ``relu``.
    """
    return nn.Sequential(
        nn.Conv2d(3, STEM_WIDTH, 3, stride=2, padding=1, bias=False),
        make_norm(STEM_WIDTH),
        nn.ReLU(inplace=True),
        nn.Conv2d(STEM_WIDTH, STEM_WIDTH, 3, stride=1, padding=1, bias=False),
        make_norm(STEM_WIDTH),
        nn.ReLU(inplace=True),
        nn.Conv2d(STEM_WIDTH, out_channels, 3, stride=1, padding=1, bias=False),
    )


def avg_down(downsample: nn.Sequential) -> nn.Sequential:
    """``AvgPool(s) -> 1x1 conv (stride 1) -> norm`` from torchvision's ``conv (stride s) -> norm``.

    The conv keeps its weights (only its stride changes), so the layer names shift by one:
    ``downsample.1`` is the conv and ``downsample.2`` the norm (GluonCV's order).
    """
    conv, norm = downsample[0], downsample[1]
    stride = conv.stride[0]
    conv.stride = (1, 1)
    # kernel 1 / stride 1 is the identity (GluonCV does the same for the stride-1 layer1 shortcut)
    pool = nn.AvgPool2d(stride, stride=stride, ceil_mode=True, count_include_pad=False)
    return nn.Sequential(pool, conv, norm)


def make_v1d(net: tv_resnet.ResNet, make_norm: Callable[[int], nn.Module]) -> tv_resnet.ResNet:
    """Turn a torchvision ``ResNet`` into GluonCV's v1d in place (deep stem, avg-pool shortcuts).

    Args:
        net: a freshly built torchvision ResNet / ResNeXt.
        make_norm: the norm the network was built with (``channels -> module``).

    Returns:
        ``net`` itself; ``net.conv1`` maps [B, 3, H, W] -> [B, 64, H/2, W/2] as before.
    """
    net.conv1 = deep_stem(make_norm, net.conv1.out_channels)
    for stage in (net.layer1, net.layer2, net.layer3, net.layer4):
        for block in stage:
            if block.downsample is not None:
                block.downsample = avg_down(block.downsample)
    for module in net.conv1.modules():
        if isinstance(module, nn.Conv2d):  # torchvision's ResNet init for the new convs
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    return net
