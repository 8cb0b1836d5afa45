"""Mixed precision: which autocast dtype ``--amp`` means on this device."""

from __future__ import annotations

import contextlib
import logging

import torch

from rcnn.errors import UserError

logger = logging.getLogger(__name__)


def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 (AVX512-BF16 or AMX); elsewhere autocast emulates it."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``--amp`` (``off|auto|bf16|fp16``) on ``device``; None = float32.

    ``auto`` picks bf16 on GPUs that support it, else fp16 (with loss scaling); on the CPU bf16
    where the processor has it, else float32 with a warning. ``fp16`` on the CPU is an error.
    """
    if amp == "off":
        return None
    if device.type == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported()
        if amp == "bf16" and not bf16_ok:
            raise UserError(f"--amp bf16: GPU {device} does not support bf16; use --amp fp16")
        if amp == "auto":
            return torch.bfloat16 if bf16_ok else torch.float16
        return torch.bfloat16 if amp == "bf16" else torch.float16
    if amp == "fp16":
        raise UserError("--amp fp16 needs a GPU; on the CPU use --amp bf16")
    if not cpu_has_bf16():
        if amp == "auto":
            logger.warning("--amp: this CPU has no native bf16; training in float32")
            return None
        logger.warning("--amp bf16: this CPU has no native bf16; autocast will be slow")
    return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``dtype``, or a no-op context for float32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
