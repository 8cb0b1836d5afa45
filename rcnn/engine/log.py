"""What a user sees during training: smoothed losses, a progress bar, metrics.jsonl, TensorBoard.

Only the main process writes; the other ranks get a ``RunLogger`` with ``enabled=False``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import deque
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class SmoothedValue:
    """The median of the last ``window`` values (robust to the spikes of detection losses)."""

    def __init__(self, window: int = 20) -> None:
        self.values: deque[float] = deque(maxlen=window)
        self.total = 0.0
        self.count = 0

    def update(self, value: float) -> None:
        self.values.append(value)
        self.total += value
        self.count += 1

    @property
    def median(self) -> float:
        ordered = sorted(self.values)
        return ordered[len(ordered) // 2] if ordered else math.nan

    @property
    def global_avg(self) -> float:
        return self.total / self.count if self.count else math.nan


class RunLogger:
    """Progress bar (ETA, smoothed loss terms, lr, images/s) + ``metrics.jsonl`` + TensorBoard.

    Args:
        run_dir: the run folder (``metrics.jsonl`` and ``tensorboard/`` go there).
        max_iters: total iterations (for the bar and the ETA).
        start_iter: the first iteration of this process's run (after a resume).
        log_interval: iterations between jsonl/TensorBoard/log lines.
        enabled: False on non-main ranks (nothing is written or shown).
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        max_iters: int,
        start_iter: int = 0,
        log_interval: int = 20,
        enabled: bool = True,
    ) -> None:
        self.enabled = enabled
        self.log_interval = log_interval
        self.max_iters = max_iters
        self.meters: dict[str, SmoothedValue] = {}
        self.images = 0
        self.tick = time.perf_counter()
        self.bar = None
        self.tb = None
        self.jsonl = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        _trim_jsonl(run_dir / "metrics.jsonl", start_iter)
        self.jsonl = open(run_dir / "metrics.jsonl", "a")  # noqa: SIM115 (closed in close())
        self.tb = _tensorboard(run_dir / "tensorboard", start_iter)
        self.bar = _progress_bar(max_iters, start_iter)

    def log_step(self, iteration: int, losses: dict[str, float], lr: float, images: int) -> None:
        """Record one finished iteration (``iteration`` is 1-based: iterations done so far)."""
        if not self.enabled:
            return
        for key, value in losses.items():
            self.meters.setdefault(key, SmoothedValue()).update(value)
        self.images += images
        if self.bar is not None:
            self.bar.update(1)
            shown = {
                k.removeprefix("loss_"): f"{m.median:.3f}"
                for k, m in self.meters.items()
                if k.startswith("loss")  # diagnostics go to metrics.jsonl only
            }
            self.bar.set_postfix(shown | {"lr": f"{lr:.2e}"}, refresh=False)
        if iteration % self.log_interval == 0 or iteration == self.max_iters:
            now = time.perf_counter()
            speed = self.images / max(now - self.tick, 1e-9)
            self.tick, self.images = now, 0
            record = {k: round(m.median, 5) for k, m in self.meters.items()}
            record |= {"lr": lr, "images_per_s": round(speed, 3)}
            if self.bar is not None:
                self.bar.set_description(f"{speed:.1f} img/s", refresh=False)
            self.write("train", iteration, record)
            logger.info("iter %d/%d %s", iteration, self.max_iters, _format(record))

    def write(self, kind: str, iteration: int, values: dict[str, Any]) -> None:
        """One line of ``metrics.jsonl`` and TensorBoard scalars under ``kind/``."""
        if not self.enabled:
            return
        line = {"type": kind, "iteration": iteration, "time": round(time.time(), 3), **values}
        self.jsonl.write(json.dumps(line) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            for key, value in _flatten(values).items():
                self.tb.add_scalar(f"{kind}/{key}", value, iteration)
            self.tb.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        if self.jsonl is not None:
            self.jsonl.close()
        self.bar = self.tb = self.jsonl = None


def _format(record: dict[str, Any]) -> str:
    return " ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()
    )


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    flat: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = float(value)
    return flat


def _trim_jsonl(path: Path, start_iter: int) -> None:
    """Keep the rows up to ``start_iter``: a resumed run rewrites what followed its checkpoint.

    A run killed mid-write leaves a partial last line; it is dropped too. The file is replaced
    atomically.
    """
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and row.get("iteration", 0) <= start_iter:
            kept.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    tmp.replace(path)


def _tensorboard(folder: Path, start_iter: int) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency; a broken install only loses the events
        logger.warning("tensorboard is not importable; no TensorBoard events will be written")
        return None
    # purge_step drops the events a killed run wrote after its last checkpoint
    return SummaryWriter(log_dir=str(folder), purge_step=start_iter or None)


def _progress_bar(total: int, start: int) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=start, unit="it", dynamic_ncols=True, mininterval=1.0)
