"""Process-wide settings that the ``rcnn`` command applies before it trains or predicts.

``keep_freed_memory``: on Linux with glibc, PyTorch's CPU tensors come from ``malloc``. Blocks of
32 MB and more (one activation of a ResNet at 800x1066 is ~100 MB) are mapped fresh from the
kernel on every allocation and unmapped when freed, so every new activation, gradient and
temporary pays a page fault per 4 kB page (measured here: ``x * s + b`` on a 111 MB tensor takes
60 ms, 13 ms once the memory is reused; a Mask R-CNN R50-FPN training step at 800x1066 goes from
~16 s to ~13 s). Telling malloc to serve every size from its heap and never to trim it lets freed
activations be reused. The cost is memory: the process keeps what it freed, and fragmentation
raised the peak RSS of that training step from 3.2 to 3.8-4.1 GB (``benchmarks/README.md``). It
changes no result: only where bytes live.

Set ``RCNN_MALLOC=system`` to leave malloc as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

logger = logging.getLogger(__name__)

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_MAX = -4
NEVER_TRIM = 2**31 - 1  # an int: bytes of free heap top kept before returning memory
TOP_PAD = 256 * 2**20  # bytes the heap grows by beyond each request: fewer brk calls


def keep_freed_memory() -> bool:
    """Make glibc malloc keep freed memory for reuse (no per-allocation ``mmap``, no trimming).

    Returns:
        True where applied; False elsewhere (not glibc, or ``RCNN_MALLOC=system``).
    """
    if os.environ.get("RCNN_MALLOC", "") == "system" or platform.system() != "Linux":
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    settings = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, NEVER_TRIM), (M_TOP_PAD, TOP_PAD))
    applied = all(libc.mallopt(param, value) for param, value in settings)
    if not applied:
        logger.warning("glibc mallopt refused the settings; malloc is left as it is")
    return applied
