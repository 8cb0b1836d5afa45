"""Speed options of a built model that keep its weights and state-dict keys: frozen BN folded
into the preceding conv and channels-last memory format (outputs within float32 rounding), and
bf16 autocast in eval-mode forwards where the processor has bf16 (outputs within bf16 rounding).

``optimize(model, amp="auto")`` applies them in place; training, inference, saving and loading
keep working (the state dict is unchanged, so checkpoints move freely between optimised and plain
models).

Shape shorthand: D_out / D_in conv output / input channels, k kernel side.
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

from rcnn.models.layers import FrozenBN
from rcnn.ops.precision import AMP_CHOICES, resolve_amp


class FoldedConv2d(nn.Conv2d):
    """A conv followed by a frozen BN, computed as one conv with scaled weight and a bias.

    ``bn(conv(x)) = conv(x) * s + (beta - mean * s)`` with ``s = gamma / sqrt(var + eps)``, so the
    conv runs with weight ``w * s`` and that bias: two elementwise passes over the activation
    (and one in the backward) disappear. The BN keeps its buffers (and state-dict keys) but
    becomes the identity (``FoldedFrozenBN``); the gradient of ``w`` flows through ``w * s``.
    """

    _folded_bn: FrozenBatchNorm2d

    def folded(self) -> tuple[Tensor, Tensor]:
        """Weight [D_out, D_in, k, k] and bias [D_out] of the fused conv."""
        bn = self._folded_bn
        scale = bn.weight * (bn.running_var + bn.eps).rsqrt()
        bias = bn.bias - bn.running_mean * scale
        if self.bias is not None:
            bias = bias + self.bias * scale
        weight = self.weight * scale.reshape(-1, 1, 1, 1)
        if self.weight.is_contiguous(memory_format=torch.channels_last):
            weight = weight.contiguous(memory_format=torch.channels_last)
        return weight, bias

    def forward(self, x: Tensor) -> Tensor:
        weight, bias = self.folded()
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class FoldedFrozenBN(FrozenBatchNorm2d):
    """A frozen BN whose affine map was folded into the conv before it: the identity."""

    def forward(self, x: Tensor) -> Tensor:
        return x


def _conv_bn_pairs(module: nn.Module):
    """(conv, frozen BN) pairs where the BN directly follows the conv in ``module``'s children.

    Covers torchvision's ResNet (``conv1``/``bn1`` ... and ``downsample`` Sequentials) and
    ``conv_norm`` Sequentials: children named ``convK``/``bnK``, or consecutive entries.
    """
    children = dict(module.named_children())
    for name, child in children.items():
        if type(child) not in (FrozenBatchNorm2d, FrozenBN):
            continue
        partner = children.get(name.replace("bn", "conv")) if name.startswith("bn") else None
        if partner is None and name.isdigit():
            partner = children.get(str(int(name) - 1))
        if type(partner) is nn.Conv2d and partner.out_channels == child.weight.numel():
            yield partner, child


def fold_frozen_bn(model: nn.Module) -> int:
    """Fold every frozen BN that follows a plain conv into it (in place); returns the count.

    Only where the BN's input is the conv's output and nothing else reads that output (true of
    ResNet bodies and ``conv_norm`` blocks, whose ``forward`` chains conv -> bn).
    """
    count = 0
    for module in list(model.modules()):
        for conv, bn in list(_conv_bn_pairs(module)):
            conv.__class__ = FoldedConv2d
            object.__setattr__(conv, "_folded_bn", bn)  # a reference, not a submodule
            bn.__class__ = FoldedFrozenBN
            count += 1
    return count


class EvalAutocast:
    """Forward hooks that run a model's eval-mode forward under autocast (train mode: untouched,
    the training loop has its own) and hand back float32 detections.

    The dtype is resolved from ``amp`` on the device of the first call, then per device.
    """

    def __init__(self, amp: str) -> None:
        self.amp = amp
        self.dtypes: dict[str, torch.dtype | None] = {}
        self.active: list[contextlib.AbstractContextManager | None] = []

    def dtype(self, device: torch.device) -> torch.dtype | None:
        if str(device) not in self.dtypes:
            self.dtypes[str(device)] = resolve_amp(self.amp, device)
        return self.dtypes[str(device)]

    def enter(self, module: nn.Module, args: tuple) -> None:
        context = None
        if not module.training:
            dtype = self.dtype(next(module.parameters()).device)
            if dtype is not None:
                context = torch.autocast(next(module.parameters()).device.type, dtype=dtype)
                context.__enter__()
        self.active.append(context)

    def exit(self, module: nn.Module, args: tuple, output):
        context = self.active.pop()
        if context is None:
            return None
        context.__exit__(None, None, None)
        return _float_detections(output) if output is not None else None


def _float_detections(output):
    """Boxes and scores of every ``Detections`` in a list in float32 (others as they are)."""
    if not isinstance(output, list):
        return output
    return [
        dataclasses.replace(d, boxes=d.boxes.float(), scores=d.scores.float())
        if dataclasses.is_dataclass(d) and hasattr(d, "scores")
        else d
        for d in output
    ]


def set_eval_autocast(model: nn.Module, amp: str) -> nn.Module:
    """Run ``model``'s eval-mode forwards under the autocast that ``amp`` (``off|auto|bf16|fp16``,
    as ``--amp``) means on its device; ``off`` removes it. In place; returns ``model``."""
    if amp not in AMP_CHOICES:
        raise ValueError(f"amp must be one of {', '.join(AMP_CHOICES)}, got {amp!r}")
    for handle in getattr(model, "_eval_autocast_handles", ()):
        handle.remove()
    model._eval_autocast_handles = ()
    if amp != "off":
        hooks = EvalAutocast(amp)
        model._eval_autocast_handles = (
            model.register_forward_pre_hook(hooks.enter),
            model.register_forward_hook(hooks.exit, always_call=True),
        )
    return model


def optimize(
    model: nn.Module,
    *,
    amp: str = "off",
    fold_bn: bool = True,
    channels_last: bool = True,
    compile_backbone: bool = False,
) -> nn.Module:
    """Apply the speed options to ``model`` in place and return it.

    Args:
        amp: ``off`` (float32, the default), ``auto`` (bf16 autocast where the processor has
            bf16 natively, AMX or AVX512-BF16, float32 elsewhere; bf16 or fp16 on a GPU),
            ``bf16`` or ``fp16`` (GPU only): the eval-mode forward runs under that autocast
            (``set_eval_autocast``); detections come back in float32. RoIAlign and NMS run in
            float32 under autocast (``rcnn.ops.precision.register_cpu_autocast_ops``).
        fold_bn: ``fold_frozen_bn`` (frozen BN only; trainable BN is left alone).
        channels_last: conv weights in channels-last memory format, so every conv (oneDNN on
            CPU, cuDNN on GPU) runs and returns NHWC; ops that need NCHW copy their input.
            bf16 convolutions need it to pay on the CPU.
        compile_backbone: ``torch.compile`` the backbone (body + FPN) in place
            (``nn.Module.compile``: the state-dict keys stay). The first call per input size
            compiles (about 20 s for inference and 40 s for a training step of R50-FPN on 2 CPU
            cores); it fuses the elementwise passes around the convs, meant for a GPU (not
            measured yet: no GPU lent). On this project's CPU it gained nothing measurable
            (``benchmarks/README.md``), so it is off unless asked for.
    """
    set_eval_autocast(model, amp)
    if fold_bn:
        fold_frozen_bn(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if compile_backbone:
        model.get_submodule("backbone").compile()
    return model
