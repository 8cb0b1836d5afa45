"""The training loop: iterations of SGD over ``model(images, targets) -> loss dict``.

One iteration is one optimizer step over ``cfg.batch_size`` images in total: split over
``world_size`` processes and ``cfg.accumulate`` micro-batches per process. The loader yields
batches forever (``build_train_loader``), so the position in the data is just the iteration
number and a resume asks the loader to start there. Each step: forward under autocast, a
non-finite check on every rank (all ranks stop together, before any backward), backward (DDP
averages the gradients), optional clipping, the step, the scheduler; then logging, checkpoints,
validation and early stopping at their intervals.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rcnn.config import TrainConfig, interval_iters, to_dict
from rcnn.data import build_train_loader
from rcnn.engine import distributed as du
from rcnn.engine.checkpoint import capture_rng, plain, restore_rng, save_checkpoint
from rcnn.engine.distributed import DistContext
from rcnn.engine.log import RunLogger
from rcnn.engine.optim import WarmupScheduler, build_optimizer
from rcnn.engine.precision import autocast, resolve_amp
from rcnn.engine.rollback import LastGoodState, non_finite_tensors
from rcnn.engine.validate import Validator
from rcnn.errors import UserError

logger = logging.getLogger(__name__)

LoaderFn = Callable[..., Iterator]


class NonFiniteLossError(UserError):
    """A loss became NaN/inf; the message names the iteration, loss terms and image ids."""


@dataclass
class TrainResult:
    """What ``train`` returns (on every rank; ``metrics`` only on the main rank)."""

    iterations: int
    max_iters: int
    wall_time: float
    metrics: dict | None = None
    best_metric: float | None = None
    best_iteration: int | None = None
    stopped_early: bool = False


@dataclass
class Schedule:
    """The loop's iteration counts, derived from the config and the dataset size."""

    iters_per_epoch: int
    max_iters: int
    micro_batch: int
    save_every: int
    val_every: int
    milestones: list[int]

    @classmethod
    def from_config(cls, cfg: TrainConfig, num_images: int, world_size: int) -> Schedule:
        per_step = world_size * cfg.accumulate
        if cfg.batch_size % per_step:
            raise UserError(
                f"batch_size {cfg.batch_size} is not divisible by processes x accumulate = "
                f"{world_size} x {cfg.accumulate}"
            )
        ipe = max(1, num_images // cfg.batch_size)
        max_iters = cfg.max_iters or max(1, round(cfg.epochs * ipe))
        return cls(
            iters_per_epoch=ipe,
            max_iters=max_iters,
            micro_batch=cfg.batch_size // per_step,
            save_every=interval_iters(cfg.save_interval, ipe, "save_interval"),
            val_every=interval_iters(cfg.val_interval, ipe, "val_interval"),
            milestones=[round(epoch * ipe) for epoch in cfg.lr_decay_epoch],
        )


def default_loader(dataset: Any, **kwargs: Any) -> Iterator:
    return build_train_loader(dataset, **kwargs)


def train(
    cfg: TrainConfig,
    model: nn.Module,
    train_set: Any,
    *,
    run_dir: Path,
    ctx: DistContext | None = None,
    validator: Validator | None = None,
    resume_state: dict | None = None,
    loader_fn: LoaderFn = default_loader,
) -> TrainResult:
    """Train ``model`` on ``train_set`` and return where it ended.

    Args:
        cfg: the resolved config (``validate()``d).
        model: an ``nn.Module`` with ``model(images, targets) -> dict`` whose ``loss_*`` terms are
            summed; not yet wrapped in DDP, on any device (it is moved to ``ctx.device``).
        train_set: a dataset of ``(image uint8 [3,H,W], Targets)``.
        run_dir: the run folder (checkpoints, metrics.jsonl, tensorboard/).
        ctx: this process's rank and device (default: one CPU process).
        validator: periodic evaluation and validation loss (None: no validation).
        resume_state: a checkpoint dict from ``load_checkpoint`` to continue from.
        loader_fn: ``loader_fn(dataset, batch_size=, num_workers=, seed=, rank=, world_size=,
            start_iter=)`` yielding ``(list[image], list[Targets])`` forever.
    """
    loop = _Loop(cfg, model, train_set, run_dir=Path(run_dir), ctx=ctx or DistContext())
    return loop.run(validator, resume_state, loader_fn)


class _Loop:
    def __init__(
        self, cfg: TrainConfig, model: nn.Module, train_set: Any, *, run_dir: Path, ctx: DistContext
    ) -> None:
        self.cfg, self.ctx, self.run_dir, self.train_set = cfg, ctx, run_dir, train_set
        self.schedule = Schedule.from_config(cfg, len(train_set), ctx.world_size)
        self.amp_dtype = resolve_amp(cfg.amp, ctx.device)
        self.model = model.to(ctx.device)
        self.class_names = list(
            getattr(model, "class_names", getattr(train_set, "class_names", []))
        )
        self.optimizer = build_optimizer(
            model, lr=cfg.lr, momentum=cfg.momentum, wd=cfg.wd, wd_bias_norm=cfg.wd_bias_norm
        )
        self.scheduler = WarmupScheduler(
            self.optimizer,
            max_iters=self.schedule.max_iters,
            warmup_iters=cfg.lr_warmup,
            warmup_factor=cfg.lr_warmup_factor,
            schedule=cfg.lr_schedule,
            milestones=self.schedule.milestones,
            decay=cfg.lr_decay,
        )
        fp16 = self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=fp16)
        self.iteration = 0
        self.tracker: dict[str, Any] = {"best": None, "best_iteration": None, "stale": 0}
        self.ddp: nn.Module = self.model
        self.last_good = LastGoodState()
        self.metrics: dict | None = None  # the last validation's, saved with each checkpoint

    def run(
        self, validator: Validator | None, resume_state: dict | None, loader_fn: LoaderFn
    ) -> TrainResult:
        start_time = time.perf_counter()
        if self.ctx.is_main:  # temporary files of a save that a kill interrupted
            for stale in self.run_dir.glob(".*.pth.*.tmp"):
                stale.unlink(missing_ok=True)
        if resume_state is not None:
            self._restore(resume_state)
        else:
            _seed_everything(self.cfg.seed + self.ctx.rank)
        self._wrap_ddp()
        sched = self.schedule
        loader = loader_fn(
            self.train_set,
            batch_size=sched.micro_batch,
            num_workers=self.cfg.num_workers,
            seed=self.cfg.seed,
            rank=self.ctx.rank,
            world_size=self.ctx.world_size,
            start_iter=self.iteration * self.cfg.accumulate,
        )
        batches = iter(loader)
        log = RunLogger(
            self.run_dir,
            max_iters=sched.max_iters,
            start_iter=self.iteration,
            log_interval=self.cfg.log_interval,
            enabled=self.ctx.is_main,
        )
        try:
            metrics, stopped = self._iterate(batches, log, validator)
        finally:
            log.close()
        # every rank leaves together, after the main rank's last save: a rank that tears down
        # its process group while another still works made gloo abort (seen in the 2-process test)
        du.barrier()
        return TrainResult(
            iterations=self.iteration,
            max_iters=sched.max_iters,
            wall_time=time.perf_counter() - start_time,
            metrics=metrics,
            best_metric=self.tracker["best"],
            best_iteration=self.tracker["best_iteration"],
            stopped_early=stopped,
        )

    def _iterate(
        self, batches: Iterator, log: RunLogger, validator: Validator | None
    ) -> tuple[dict | None, bool]:
        sched = self.schedule
        # a finished run resumed: the metrics saved with its last checkpoint
        metrics = self.metrics if self.iteration >= sched.max_iters else None
        self.model.train()
        while self.iteration < sched.max_iters:
            lr = self.scheduler.get_last_lr()[0]  # the rate this step uses
            losses, num_images = self._step(batches)
            self.iteration += 1
            log.log_step(self.iteration, losses, lr, num_images)
            done = self.iteration == sched.max_iters
            if validator and (done or _due(self.iteration, sched.val_every)):
                metrics = self._validate(validator, log)
            stop = self._should_stop()
            if done or stop or _due(self.iteration, sched.save_every):
                self._save("last.pth")
            if stop:
                logger.info("early stopping at iteration %d", self.iteration)
                return metrics, True
        return metrics, False

    def _step(self, batches: Iterator) -> tuple[dict[str, float], int]:
        """One optimizer step over ``accumulate`` micro-batches; returns mean losses, #images."""
        cfg, accumulate = self.cfg, self.cfg.accumulate
        self.last_good.start_step(self)
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, torch.Tensor] = {}
        num_images = 0
        for micro in range(accumulate):
            images, targets = _next_batch(batches)
            num_images += len(images) * self.ctx.world_size
            sync = micro == accumulate - 1 or not self.ctx.distributed
            with self.ddp.no_sync() if not sync else contextlib.nullcontext():
                outputs = self._forward(images, targets)
                loss_terms = {k: v for k, v in outputs.items() if k.startswith("loss_")}
                total = sum(loss_terms.values())
                if du.any_true(not bool(torch.isfinite(total)), self.ctx.device):
                    self._stop_non_finite(loss_terms, targets)
                self.scaler.scale(total.float() / accumulate).backward()
            for key, value in outputs.items():
                if torch.is_tensor(value) and value.numel() == 1:
                    sums[key] = sums.get(key, 0.0) + value.detach().float() / accumulate
        self.last_good.forward_was_finite()
        if cfg.clip_grad > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        bad = non_finite_tensors(self.model)
        if du.any_true(bool(bad), self.ctx.device):
            self._stop_non_finite_weights(bad)
        reduced = du.all_reduce_mean(sums)
        reduced["loss"] = sum((v for k, v in reduced.items() if k.startswith("loss_")), 0.0)
        return {k: float(v) for k, v in reduced.items()}, num_images

    def _forward(self, images: list, targets: list) -> dict[str, torch.Tensor]:
        device = self.ctx.device
        try:
            with autocast(device, self.amp_dtype):
                return self.ddp(_to_device(images, device), _targets_to(targets, device))
        except RuntimeError as error:
            if self.amp_dtype is None or "not implemented for" not in str(error):
                raise
            kernel = str(error).strip().splitlines()[-1][-120:]
            raise UserError(
                f"--amp {self.cfg.amp}: an operator of the model has no {self.amp_dtype} kernel "
                f"on {device.type} ({kernel}); train without --amp"
            ) from None

    def _stop_non_finite(self, terms: dict[str, torch.Tensor], targets: list) -> None:
        ids = [getattr(t, "image_id", None) for t in targets]
        local = {"terms": {k: float(v.detach()) for k, v in terms.items()}, "ids": ids}
        gathered = du.gather_objects(local)
        failed_at = self.iteration + 1
        good, path = self._roll_back()
        all_ids = [i for item in gathered for i in item["ids"]]
        shown = ", ".join(
            f"{k}={v:.4g}"
            for k, v in gathered[0]["terms"].items()
            if any(not math.isfinite(g["terms"][k]) for g in gathered)
        )
        every = ", ".join(f"{k}={v:.4g}" for k, v in gathered[0]["terms"].items())
        raise NonFiniteLossError(
            f"non-finite loss at iteration {failed_at}: {shown or every} "
            f"(all terms: {every}); image ids of the batch: {all_ids}; rolled back to the last "
            f"state with a finite loss (iteration {good}), saved in {path}"
        )

    def _stop_non_finite_weights(self, names: list[str]) -> None:
        failed_at = self.iteration + 1
        good, path = self._roll_back()
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        raise NonFiniteLossError(
            f"non-finite weights after the step of iteration {failed_at} ({shown}; the learning "
            f"rate {self.cfg.lr:g} may be too high); rolled back to the last state with a finite "
            f"loss (iteration {good}), saved in {path}"
        )

    def _roll_back(self) -> tuple[int, Path]:
        """Restore the last good state (``rcnn.engine.rollback``) and save it as last.pth."""
        good = self.last_good.restore(self)
        return good, self._save("last.pth")

    def _validate(self, validator: Validator, log: RunLogger) -> dict | None:
        self.model.eval()
        metrics, primary = validator.run(self.model, self.ctx)
        self.model.train()
        if primary is not None:
            best = self.tracker["best"]
            if best is None or primary > best + self.cfg.early_stop_min_delta:
                self.tracker.update(best=primary, best_iteration=self.iteration, stale=0)
                self._save("best.pth")
            else:
                self.tracker["stale"] += 1
        if self.ctx.is_main and metrics is not None:
            log.write("val", self.iteration, _scalars(metrics) | {"primary": primary})
            self.metrics = plain(metrics)
        return metrics

    def _should_stop(self) -> bool:
        patience = self.cfg.early_stop_patience
        return patience > 0 and self.tracker["stale"] >= patience

    def _save(self, name: str) -> Path:
        path = self.run_dir / name
        rng = du.gather_objects(capture_rng())
        if not self.ctx.is_main:
            return path
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng[0],
            "rng_per_rank": rng,
            "iteration": self.iteration,
            "epoch": self.iteration / self.schedule.iters_per_epoch,
            "config": to_dict(self.cfg),
            "class_names": self.class_names,
            "tracker": dict(self.tracker),
            "metrics": self.metrics,
        }
        save_checkpoint(path, state)
        return path

    def _restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.iteration = int(state["iteration"])
        self.tracker.update(state.get("tracker", {}))
        self.metrics = state.get("metrics")
        per_rank = state.get("rng_per_rank") or [state["rng"]]
        if len(per_rank) == self.ctx.world_size:
            restore_rng(per_rank[self.ctx.rank])
        else:
            logger.warning(
                "resuming on %d processes (saved on %d): RNG streams re-seeded",
                self.ctx.world_size,
                len(per_rank),
            )
            _seed_everything(self.cfg.seed + self.ctx.rank + self.iteration)
        logger.info("resumed at iteration %d", self.iteration)

    def _wrap_ddp(self) -> None:
        if not self.ctx.distributed:
            return
        if self.cfg.sync_bn:
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        device_ids = [self.ctx.device] if self.ctx.device.type == "cuda" else None
        self.ddp = nn.parallel.DistributedDataParallel(
            self.model,
            device_ids=device_ids,
            find_unused_parameters=self.cfg.find_unused_parameters,
        )


def _next_batch(batches: Iterator) -> tuple[list, list]:
    # Loading never touches the training RNG (a DataLoader draws a base seed from the global
    # generator when its iterator starts, which would shift a resumed run's random stream).
    with torch.random.fork_rng(devices=[]):
        return next(batches)


def _due(iteration: int, every: int) -> bool:
    return every > 0 and iteration % every == 0


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _to_device(images: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    return [image.to(device, non_blocking=True) for image in images]


def _targets_to(targets: list, device: torch.device) -> list:
    return [t.to(device) if hasattr(t, "to") else t for t in targets]


def _scalars(metrics: dict) -> dict:
    """The numeric leaves of an evaluator's output (per-class tables left out of the log)."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            inner = _scalars({k: v for k, v in value.items() if k != "per_class"})
            if inner:
                out[key] = inner
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = value
    return out
