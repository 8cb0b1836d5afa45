"""ResNet / ResNeXt bodies (torchvision's classes) returning C2-C5.

Shape shorthand: B images, D channels, H/W padded image size; ``c{k}`` has stride 2**k.
"""

from __future__ import annotations

import logging

import torchvision.models.resnet as tv_resnet
from torch import Tensor, nn

from rcnn.models.config import BackboneConfig
from rcnn.models.layers import norm_factory
from rcnn.models.stems import make_v1d

logger = logging.getLogger(__name__)

BODIES = {
    "resnet18": (tv_resnet.resnet18, 64),
    "resnet34": (tv_resnet.resnet34, 64),
    "resnet50": (tv_resnet.resnet50, 256),
    "resnet101": (tv_resnet.resnet101, 256),
    "resnet152": (tv_resnet.resnet152, 256),
    "resnext101_32x8d": (tv_resnet.resnext101_32x8d, 256),
}
STAGES = ("layer1", "layer2", "layer3", "layer4")
# blocks per stage of the BasicBlock bodies (resnet10 exists only as a from-scratch body)
BASIC_LAYERS = {"resnet10": (1, 1, 1, 1), "resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}


def basic_resnet(layers: tuple[int, ...], width: int, norm_layer) -> nn.Module:
    """A BasicBlock ResNet whose layer1 has ``width`` channels, with torchvision's module names.

    torchvision's ``ResNet`` hard-codes 64/128/256/512 planes (``width_per_group`` only widens
    Bottlenecks), so the stages are built here from its ``BasicBlock`` with its stem and
    initialisation (``torchvision/models/resnet.py``).
    """
    net = nn.Module()
    net.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    net.bn1 = norm_layer(width)
    net.relu = nn.ReLU(inplace=True)
    net.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    in_planes = width
    for index, count in enumerate(layers):
        planes, stride = width * 2**index, 1 if index == 0 else 2
        blocks = []
        for block_index in range(count):
            down = None
            if block_index == 0 and (stride != 1 or in_planes != planes):
                down = nn.Sequential(
                    tv_resnet.conv1x1(in_planes, planes, stride), norm_layer(planes)
                )
            step = stride if block_index == 0 else 1
            blocks.append(
                tv_resnet.BasicBlock(in_planes, planes, step, down, norm_layer=norm_layer)
            )
            in_planes = planes
        setattr(net, STAGES[index], nn.Sequential(*blocks))
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    return net


def make_net(cfg: BackboneConfig) -> tuple[nn.Module, int]:
    """The torchvision-style network named by ``cfg`` and its c2 channels."""
    norm_layer = norm_factory(cfg.norm, eps=cfg.norm_eps)
    if cfg.width != 64 or cfg.name not in BODIES:
        if cfg.name not in BASIC_LAYERS:
            raise ValueError(
                f"unknown backbone {cfg.name!r} (width {cfg.width}); expected one of "
                f"{sorted(BODIES)}, or {sorted(BASIC_LAYERS)} with any width"
            )
        return basic_resnet(
            BASIC_LAYERS[cfg.name], cfg.width, norm_layer or nn.BatchNorm2d
        ), cfg.width
    builder, c2_channels = BODIES[cfg.name]
    return builder(weights=None, norm_layer=norm_layer), c2_channels


def stride_in_first_conv(net: nn.Module) -> None:
    """Move each bottleneck's stride from its 3x3 conv (``conv2``) to its 1x1 ``conv1`` in place.

    MSRA's original ResNet (Caffe) and Detectron2's ``STRIDE_IN_1X1=True`` (its ImageNet weights
    were trained so); the weights keep their shapes, only where the image is subsampled changes.
    """
    for name in STAGES:
        for block in getattr(net, name):
            if not isinstance(block, tv_resnet.Bottleneck):
                raise ValueError("backbone.stride_in_1x1 needs a bottleneck ResNet (50 and up)")
            stride = block.conv2.stride
            block.conv2.stride, block.conv1.stride = (1, 1), stride


class ResNetBody(nn.Module):
    """torchvision's ResNet without avgpool/fc: ``forward(x [B,3,H,W]) -> {"c2".."c5"}``.

    Module names (``conv1, bn1, layer1..layer4``) are torchvision's, so ImageNet and detection
    checkpoints load by name.

    Attributes:
        out_channels: channels of c2..c5, e.g. (256, 512, 1024, 2048) for ResNet-50.
        strides: (4, 8, 16, 32).
    """

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        net, c2_channels = make_net(cfg)
        if cfg.stride_in_1x1:  # MSRA / Detectron2 bottlenecks: the first 1x1 conv downsamples
            stride_in_first_conv(net)
        if cfg.stem == "v1d":  # GluonCV's ResNet-v1d: deep stem + avg-pool shortcuts
            make_v1d(net, norm_factory(cfg.norm, eps=cfg.norm_eps) or nn.BatchNorm2d)
        elif cfg.stem != "torchvision":
            raise ValueError(f"unknown backbone.stem {cfg.stem!r}; expected torchvision or v1d")
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        for name in STAGES:
            setattr(self, name, getattr(net, name))
        self.out_channels = tuple(c2_channels * 2**i for i in range(4))
        self.strides = (4, 8, 16, 32)
        self.freeze(cfg.freeze_at)

    def freeze(self, freeze_at: int) -> None:
        """Stop gradients of the stem (``freeze_at >= 1``) and of layer1..layer(freeze_at - 1)."""
        frozen: list[nn.Module] = [self.conv1, self.bn1] if freeze_at >= 1 else []
        frozen += [getattr(self, name) for name in STAGES[: max(freeze_at - 1, 0)]]
        for module in frozen:
            for param in module.parameters():
                param.requires_grad_(False)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = {}
        for level, name in enumerate(STAGES, start=2):
            x = getattr(self, name)(x)
            out[f"c{level}"] = x
        return out
