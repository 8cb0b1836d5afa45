"""Process groups for DDP: ``--gpus`` spawning, ``torchrun`` environments, and small collectives.

One code path for every launch: a process knows its ``rank``, ``world_size`` and device from a
``DistContext``; ``--gpus 0,1`` spawns one process per GPU on this machine (``spawn``), and
``torchrun`` (one or many nodes) sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` that
``init_from_env`` reads.
The backend is nccl on GPUs and gloo on the CPU.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from rcnn.engine.runtime import keep_freed_memory
from rcnn.errors import UserError


@dataclass
class DistContext:
    """Where this process runs: ``device`` is ``cpu`` or ``cuda:<id>``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def parse_gpus(text: str | None) -> list[int]:
    """``"0,1,2"`` → ``[0, 1, 2]``; ``""``/``"cpu"`` → ``[]`` (CPU). Checks that the ids exist."""
    if text is None or str(text).strip().lower() in ("", "cpu", "-1"):
        return []
    try:
        ids = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--gpus {text!r}: expected comma-separated GPU ids like 0,1") from None
    if len(set(ids)) != len(ids) or any(i < 0 for i in ids):
        raise UserError(f"--gpus {text!r}: GPU ids must be distinct and >= 0")
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    missing = [i for i in ids if i >= available]
    if missing:
        have = f"GPUs 0-{available - 1}" if available else "no CUDA GPU"
        raise UserError(
            f"--gpus {text}: GPU {missing[0]} does not exist (this machine has {have}; "
            "leave --gpus empty to train on the CPU)"
        )
    return ids


def free_port() -> int:
    """A TCP port free on this machine for the rendezvous of spawned processes."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_from_env(gpus: list[int]) -> DistContext:
    """Join the process group that ``torchrun`` (or ``spawn_workers``) described in the env.

    Args:
        gpus: this node's GPU ids (local rank ``i`` uses ``gpus[i]``); empty: CPU with gloo.
    """
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    device = torch.device("cpu")
    if gpus:
        if local_rank >= len(gpus):
            raise UserError(
                f"process with local rank {local_rank} has no GPU: --gpus lists {len(gpus)} "
                "(give one GPU id per process on each node)"
            )
        gpu = gpus[local_rank]
        torch.cuda.set_device(gpu)
        device = torch.device("cuda", gpu)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistContext(rank, world_size, local_rank, device)


def spawn_workers(fn: Callable[..., Any], nprocs: int, args: tuple = ()) -> None:
    """Run ``fn(local_rank, *args)`` in ``nprocs`` processes that each see the rendezvous env."""
    import torch.multiprocessing as mp

    saved = {key: os.environ.get(key) for key in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE")}
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    os.environ["WORLD_SIZE"] = str(nprocs)
    try:
        mp.spawn(_spawned_entry, args=(fn, args), nprocs=nprocs, join=True)
    finally:  # the children inherited the rendezvous; this process stays single
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _spawned_entry(local_rank: int, fn: Callable[..., Any], args: tuple) -> None:
    os.environ["RANK"] = str(local_rank)
    os.environ["LOCAL_RANK"] = str(local_rank)
    keep_freed_memory()  # a spawned interpreter starts with malloc's defaults again
    fn(local_rank, *args)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce_mean(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The mean over processes of each (detached) scalar; identity in a single process."""
    if world_size() == 1 or not values:
        return {k: v.detach() for k, v in values.items()}
    keys = sorted(values)
    stacked = torch.stack([values[k].detach().float() for k in keys])
    dist.all_reduce(stacked)
    stacked /= world_size()
    return dict(zip(keys, stacked, strict=True))


def any_true(flag: bool, device: torch.device) -> bool:
    """True on every process when ``flag`` is True on any (for stopping all ranks together)."""
    if world_size() == 1:
        return flag
    tensor = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(tensor)
    return bool(tensor.item() > 0)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every process."""
    if world_size() == 1:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` on every rank, in rank order."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out
