"""``FrozenBN``: torchvision's frozen BN computed in place, bit for bit."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from rcnn.models.layers import FrozenBN, norm_factory


def frozen_pair(channels: int, generator: torch.Generator) -> tuple[FrozenBatchNorm2d, FrozenBN]:
    reference = FrozenBatchNorm2d(channels, eps=1e-5)
    for key in ("weight", "bias", "running_mean", "running_var"):
        values = torch.randn(channels, generator=generator)
        getattr(reference, key).copy_(values.abs() + 0.1 if key == "running_var" else values)
    ours = FrozenBN(channels, eps=1e-5, inplace=True)
    ours.load_state_dict(reference.state_dict())
    return reference, ours


def test_inplace_frozen_bn_is_bit_identical_forward_and_backward():
    gen = torch.Generator().manual_seed(0)
    reference, ours = frozen_pair(8, gen)
    conv = nn.Conv2d(3, 8, 3, padding=1)
    x = torch.randn(2, 3, 17, 23, generator=gen)
    outputs, grads = [], []
    for bn in (reference, ours):
        conv.zero_grad()
        out = torch.relu_(bn(conv(x)))  # the ResNet pattern: conv -> bn -> in-place ReLU
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        outputs.append(out.detach())
        grads.append((conv.weight.grad.clone(), conv.bias.grad.clone()))
    assert torch.equal(outputs[0], outputs[1])
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
    assert outputs[0].abs().sum() > 0 and grads[0][0].abs().sum() > 0


def test_inplace_frozen_bn_writes_into_its_input_but_never_into_a_leaf():
    gen = torch.Generator().manual_seed(1)
    reference, ours = frozen_pair(4, gen)
    x = torch.randn(1, 4, 5, 5, generator=gen)
    expected = reference(x)
    temporary = x.clone()
    assert ours(temporary).data_ptr() == temporary.data_ptr()
    assert torch.equal(temporary, expected)
    leaf = x.clone().requires_grad_(True)  # in place on a leaf that needs grad would raise
    out = ours(leaf)
    assert out.data_ptr() != leaf.data_ptr() and torch.equal(leaf.detach(), x)
    assert torch.equal(out.detach(), expected)


def test_norm_factory_frozen_bn_loads_torchvision_state_dict():
    made = norm_factory("frozen_bn", eps=0.0)(16)
    assert isinstance(made, FrozenBN) and made.inplace and made.eps == 0.0
    assert "inplace=True" in repr(made)
    made.load_state_dict(FrozenBatchNorm2d(16).state_dict())
    with pytest.raises(ValueError, match="unknown norm"):
        norm_factory("layernorm")
