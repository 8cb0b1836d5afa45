"""GluonCV's ResNet-v1d on torchvision's ResNet: deep stem and average-pool shortcuts."""

from __future__ import annotations

import torch
from torch import nn

from rcnn.models.config import BackboneConfig
from rcnn.models.resnet import ResNetBody
from rcnn.models.stems import avg_down


def test_avg_down_by_hand():
    conv = nn.Conv2d(1, 1, 1, stride=2, bias=False)
    nn.init.ones_(conv.weight)
    down = avg_down(nn.Sequential(conv, nn.Identity()))
    x = torch.arange(1.0, 10.0).view(1, 1, 3, 3)
    # 2x2 windows, ceil mode, padding not counted: (1+2+4+5)/4, (3+6)/2, (7+8)/2, 9
    expected = torch.tensor([[[[3.0, 4.5], [7.5, 9.0]]]])
    assert torch.equal(down(x), expected)
    assert conv.stride == (1, 1)


def test_v1d_body_structure_and_strides():
    body = ResNetBody(BackboneConfig(name="resnet50", stem="v1d", pretrained_base=False))
    convs = [m for m in body.conv1 if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (3, 32, (3, 3), (2, 2)),
        (32, 32, (3, 3), (1, 1)),
        (32, 64, (3, 3), (1, 1)),
    ]
    pool, conv = body.layer3[0].downsample[0], body.layer3[0].downsample[1]
    assert isinstance(pool, nn.AvgPool2d) and pool.kernel_size == 2 and pool.ceil_mode
    assert not pool.count_include_pad and conv.stride == (1, 1)
    out = body(torch.zeros(1, 3, 64, 96))
    assert {k: tuple(v.shape[-2:]) for k, v in out.items()} == {
        "c2": (16, 24),
        "c3": (8, 12),
        "c4": (4, 6),
        "c5": (2, 3),
    }
    plain = ResNetBody(BackboneConfig(name="resnet50", pretrained_base=False))
    extra = sum(p.numel() for p in body.parameters()) - sum(p.numel() for p in plain.parameters())
    # deep stem 3*32*9 + 32*32*9 + 32*64*9 replaces the 7x7 conv 3*64*49 (frozen-BN affine
    # terms are buffers, not parameters)
    assert extra == 3 * 32 * 9 + 32 * 32 * 9 + 32 * 64 * 9 - 3 * 64 * 49
