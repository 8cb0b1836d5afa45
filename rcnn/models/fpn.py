"""Feature pyramid network: C2-C5 -> P2-P6 (Lin et al. 2017).

Shape shorthand: B images, D channels (``out_channels``); ``p{k}`` has stride 2**k.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from rcnn.models.layers import conv_norm


class FPN(nn.Module):
    """Lateral 1x1 convs, nearest-neighbour top-down sum, 3x3 output convs, and P6.

    P6 is P5's output subsampled by 2 (``max_pool2d(kernel=1, stride=2)``: torchvision's
    ``LastLevelMaxPool``), or with ``p6="conv"`` a 3x3 stride-2 conv of P5's lateral (GluonCV's
    ``FPNFeatureExpander``, ``p6_conv=True``); used by the RPN only.

    Args:
        in_channels: channels of c2..c5.
        out_channels: D.
        norm: optional norm after each conv (torchvision v2 uses BatchNorm).
        p6: ``"pool"`` or ``"conv"`` (see above).
    """

    def __init__(
        self, in_channels: tuple[int, ...], out_channels: int, *, norm: str = "", p6: str = "pool"
    ) -> None:
        super().__init__()
        if p6 not in ("pool", "conv"):
            raise ValueError(f"fpn.p6 must be 'pool' or 'conv', got {p6!r}")
        self.p6 = None
        if p6 == "conv":
            self.p6 = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
        self.lateral = nn.ModuleList(conv_norm(c, out_channels, 1, norm=norm) for c in in_channels)
        self.output = nn.ModuleList(
            conv_norm(out_channels, out_channels, 3, norm=norm) for _ in in_channels
        )
        self.in_features = tuple(f"c{k}" for k in range(2, 2 + len(in_channels)))
        self.out_features = tuple(f"p{k}" for k in range(2, 3 + len(in_channels)))
        self.out_channels = out_channels
        self.strides = tuple(2**k for k in range(2, 3 + len(in_channels)))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_uniform_(module.weight, a=1)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, feats: dict[str, Tensor]) -> dict[str, Tensor]:
        """C2-C5 ``{"c2": [B,D2,H/4,W/4], ...}`` -> ``{"p2": [B,D,H/4,W/4], ..., "p6"}``."""
        inputs = [feats[name] for name in self.in_features]
        top = self.lateral[-1](inputs[-1])
        outs = [self.output[-1](top)]
        p6 = F.max_pool2d(outs[-1], kernel_size=1, stride=2) if self.p6 is None else self.p6(top)
        for idx in range(len(inputs) - 2, -1, -1):
            lateral = self.lateral[idx](inputs[idx])
            top = lateral + F.interpolate(top, size=lateral.shape[-2:], mode="nearest")
            outs.insert(0, self.output[idx](top))
        outs.append(p6)
        return dict(zip(self.out_features, outs, strict=True))


class Backbone(nn.Module):
    """Body + FPN: ``forward(x [B,3,H,W]) -> {"p2".."p6"}``; has ``strides``, ``out_channels``."""

    def __init__(self, body: nn.Module, fpn: FPN) -> None:
        super().__init__()
        self.body = body
        self.fpn = fpn
        self.out_channels = fpn.out_channels
        self.strides = fpn.strides
        self.out_features = fpn.out_features

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.fpn(self.body(x))
