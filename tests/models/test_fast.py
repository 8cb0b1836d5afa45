"""``rcnn.models.fast.optimize``: same state dict; outputs and gradients within float rounding."""

from __future__ import annotations

import copy

import torch
from tiny_models import tiny_config
from torchvision.ops.misc import FrozenBatchNorm2d

from rcnn.models.build import build_model
from rcnn.models.fast import FoldedConv2d, optimize


def random_frozen_stats(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Give every frozen BN non-trivial statistics, so that folding has something to fold."""
    for module in model.modules():
        if isinstance(module, FrozenBatchNorm2d):
            n = module.weight.numel()
            module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)


def test_optimized_model_matches_plain():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    plain = build_model(tiny_config(mask=True))
    random_frozen_stats(plain, gen)
    fast = optimize(copy.deepcopy(plain))
    folded = [m for m in fast.modules() if isinstance(m, FoldedConv2d)]
    assert len(folded) == 20  # ResNet-18: stem + 8 blocks x 2 convs + 3 downsamples
    assert fast.state_dict().keys() == plain.state_dict().keys()
    image = torch.randint(0, 256, (3, 128, 160), dtype=torch.uint8, generator=gen)
    plain.eval(), fast.eval()
    batch = torch.rand(1, 3, 128, 160, generator=gen)
    with torch.no_grad():
        for p, f in zip(plain.backbone(batch).values(), fast.backbone(batch).values(), strict=True):
            assert f.is_contiguous(memory_format=torch.channels_last)
            # float rounding only: differences far below the features' own scale
            torch.testing.assert_close(f, p, rtol=1e-4, atol=1e-4 * float(p.abs().max()))
    ours, ref = fast([image])[0], plain([image])[0]
    assert len(ref) > 0
    torch.testing.assert_close(ours.scores, ref.scores, rtol=0, atol=1e-4)
    torch.testing.assert_close(ours.boxes, ref.boxes, rtol=0, atol=1e-2)


def test_optimized_gradients_match_plain():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    plain = build_model(tiny_config(mask=False)).train()
    random_frozen_stats(plain, gen)
    fast = optimize(copy.deepcopy(plain))
    batch = torch.rand(2, 3, 64, 96, generator=gen)
    grads = []
    for model in (plain, fast):
        model.zero_grad()
        sum(f.square().mean() for f in model.backbone(batch).values()).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert "backbone.body.layer2.0.conv1.weight" in grads[1]
    for name, grad in grads[0].items():
        scale = float(grad.abs().max())
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-4, atol=1e-5 * scale, msg=name)
    # the frozen stem and layer1 stay frozen, the folded BN still loads from a plain checkpoint
    assert "backbone.body.conv1.weight" not in grads[1]
    fast.load_state_dict(plain.state_dict())


def test_compiled_backbone_keeps_state_dict_and_outputs():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(2)
    plain = build_model(tiny_config(mask=False)).eval()
    random_frozen_stats(plain, gen)
    fast = optimize(copy.deepcopy(plain), fold_bn=False, channels_last=False, compile_backbone=True)
    assert fast.state_dict().keys() == plain.state_dict().keys()  # nn.Module.compile: in place
    batch = torch.rand(1, 3, 96, 128, generator=gen)
    with torch.no_grad():
        compiled, ref = fast.backbone(batch), plain.backbone(batch)
    assert fast.backbone._compiled_call_impl is not None
    for f, p in zip(compiled.values(), ref.values(), strict=True):
        torch.testing.assert_close(f, p, rtol=1e-4, atol=1e-4 * float(p.abs().max()))
