"""``keep_freed_memory``: glibc malloc settings of the ``rcnn`` command, with an opt-out."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from rcnn.engine.runtime import keep_freed_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# a child process, so this test process keeps malloc's defaults: the time of reusing a freed
# 256 MB block, whose pages the settings keep mapped (without them every reuse page-faults anew)
CHILD = """
import sys, time, torch
from rcnn.engine.runtime import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "on" else False
best = float("inf")
for _ in range(5):
    start = time.perf_counter()
    torch.empty(2**26).fill_(1.0)
    best = min(best, time.perf_counter() - start)
print(applied, best)
"""


def run_child(mode: str) -> tuple[bool, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True
    )
    applied, seconds = out.stdout.split()
    return applied == "True", float(seconds)


@pytest.mark.skipif(not GLIBC, reason="glibc malloc only")
def test_keep_freed_memory_reuses_pages():
    applied, kept = run_child("on")
    assert applied
    _, fresh = run_child("off")
    assert kept < 0.7 * fresh, (kept, fresh)


def test_keep_freed_memory_opt_out(monkeypatch):
    monkeypatch.setenv("RCNN_MALLOC", "system")
    assert keep_freed_memory() is False
