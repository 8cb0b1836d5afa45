"""Mixed precision: which autocast dtype ``--amp`` means on this device and processor.

``auto`` means bf16 where the processor computes it natively (AMX or AVX512-BF16: Intel Sapphire
Rapids and later, AMD Zen 4 and later), float32 elsewhere (AVX2 processors such as AMD Zen 3,
where oneDNN emulates bf16 and it is slower than float32); on a GPU, bf16 where supported, else
fp16. Inference (``rcnn.models.fast.optimize``), ``rcnn train``, ``rcnn eval`` and ``rcnn predict``
share this choice.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from pathlib import Path

import torch

from rcnn.errors import UserError

logger = logging.getLogger(__name__)


AMP_CHOICES = ("off", "auto", "bf16", "fp16")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The processor's feature flags from ``/proc/cpuinfo`` (empty where it cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 (AVX512-BF16 or AMX); elsewhere autocast emulates it.

    Asks torch (``torch.cpu``) and, where torch's build cannot tell, the kernel's flags
    (``amx_bf16``, ``avx512_bf16``)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    if any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks):
        return True
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


def cpu_isa() -> str:
    """The widest vector / matrix extension this processor has: ``AMX``, ``AVX-512``, ``AVX2``
    or torch's name for what it has (``torch.backends.cpu.get_cpu_capability``)."""
    flags = cpu_flags()
    if "amx_bf16" in flags or bool(getattr(torch.cpu, "_is_amx_tile_supported", bool)()):
        return "AMX"
    capability = torch.backends.cpu.get_cpu_capability()
    if "avx512f" in flags or capability.startswith("AVX512"):
        return "AVX-512" + (" (BF16)" if "avx512_bf16" in flags else "")
    if "avx2" in flags or capability == "AVX2":
        return "AVX2"
    return capability


def cpu_name() -> str:
    """The processor's model name from ``/proc/cpuinfo`` ('unknown' where it cannot be read)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``--amp`` (``off|auto|bf16|fp16``) on ``device``; None = float32.

    ``auto`` picks bf16 on GPUs that support it, else fp16 (with loss scaling); on the CPU bf16
    where the processor has it, else float32 with a warning. ``fp16`` on the CPU is an error.
    """
    if amp not in AMP_CHOICES:
        raise UserError(f"--amp {amp}: expected one of {', '.join(AMP_CHOICES)}")
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
            logger.info("--amp auto: this CPU has no native bf16 (AMX / AVX512-BF16): float32")
            return None
        _warn_emulated_bf16()
    register_cpu_autocast_ops()
    return torch.bfloat16


@functools.cache
def _warn_emulated_bf16() -> None:
    """Once per process."""
    logger.warning("--amp bf16: this CPU has no native bf16 (AMX / AVX512-BF16): emulated, slow")


_CPU_AUTOCAST_LIBRARY: list = []  # the registration lives as long as the process (once)


def register_cpu_autocast_ops() -> None:
    """Run torchvision's RoIAlign / RoIPool / NMS in float32 under CPU autocast.

    Their CPU kernels have no bf16 version; torchvision registers float32 autocast wrappers for
    CUDA only (``torchvision/csrc/ops/autocast/*``). These are the same wrappers for
    ``AutocastCPU``: inputs cast to float32, outputs cast back to the input's dtype (boxes and
    indices of NMS unchanged). Idempotent.
    """
    if _CPU_AUTOCAST_LIBRARY:
        return
    import torchvision  # noqa: F401  (loads the torchvision:: operators)

    library = torch.library.Library("torchvision", "IMPL")
    library.impl(
        "roi_align", _float32(torch.ops.torchvision.roi_align, cast_back=True), "AutocastCPU"
    )
    library.impl(
        "roi_pool", _float32(torch.ops.torchvision.roi_pool, cast_back=True), "AutocastCPU"
    )
    library.impl("nms", _float32(torch.ops.torchvision.nms, cast_back=False), "AutocastCPU")
    _CPU_AUTOCAST_LIBRARY.append(library)


def _float32(op, *, cast_back: bool):
    def wrapper(*args):
        dtype = args[0].dtype
        floats = [a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
        exclude = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)
        with torch._C._ExcludeDispatchKeyGuard(exclude):
            out = op(*floats)
        if not cast_back:
            return out
        if isinstance(out, tuple):  # roi_pool returns (output, argmax)
            return (out[0].to(dtype), *out[1:])
        return out.to(dtype)

    return wrapper


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``dtype``, or a no-op context for float32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
