"""Two gloo processes on the CPU give the same update as one process on the same global batch."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import torch
from engine_tiny import TinyDetector, TinySet, tiny_config

from rcnn.engine.checkpoint import load_checkpoint
from rcnn.engine.distributed import DistContext, cleanup, init_from_env, spawn_workers
from rcnn.engine.train import train

HERE = Path(__file__).resolve().parent
GLOBAL_BATCHES = [[0, 5], [3, 6]]  # two iterations of a global batch of 2 images


def _loader_for(rank: int, world_size: int, run_dir: Path):
    data = TinySet(8)

    def loader_fn(dataset, *, batch_size, rank=rank, world_size=world_size, **kwargs):
        assert batch_size == 2 // world_size
        for step, batch in enumerate(GLOBAL_BATCHES):
            if step == 1 and rank == 0:  # iteration 1 is done and saved: keep the first update
                shutil.copy(run_dir / "last.pth", run_dir / "first.pth")
            mine = batch[rank::world_size]  # the global batch split in two
            samples = [data[i] for i in mine]
            yield [s[0] for s in samples], [s[1] for s in samples]

    return loader_fn


def _run(rank: int, world_size: int, run_dir: str) -> None:
    sys.path.insert(0, str(HERE))
    torch.set_num_threads(1)
    # spawned through rcnn's launcher: the rendezvous comes from the environment, as with torchrun
    ctx = init_from_env([]) if world_size > 1 else DistContext()
    assert (ctx.rank, ctx.world_size, ctx.device.type) == (rank, world_size, "cpu")
    torch.manual_seed(0)
    # max_iters=1 is "the first update"; a second checks that the processes stay in step
    cfg = tiny_config(max_iters=2, lr_warmup=0, save_interval="1it")
    train(
        cfg,
        TinyDetector(noisy=False),
        TinySet(8),
        run_dir=Path(run_dir),
        ctx=ctx,
        loader_fn=_loader_for(rank, world_size, Path(run_dir)),
    )
    if world_size > 1:
        assert torch.distributed.get_backend() == "gloo"
        cleanup()


def test_two_gloo_processes_match_one_process(tmp_path, monkeypatch, torch_threads):
    torch_threads(torch.get_num_threads())  # the in-process run below sets 1: restored after
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    spawn_workers(_run, 2, args=(2, str(tmp_path / "ddp")))
    assert "WORLD_SIZE" not in os.environ  # the launcher left this process single
    _run(0, 1, str(tmp_path / "single"))
    for name in ("first.pth", "last.pth"):
        ddp = load_checkpoint(tmp_path / "ddp" / name)
        single = load_checkpoint(tmp_path / "single" / name)
        assert ddp["iteration"] == single["iteration"] == (1 if name == "first.pth" else 2)
        for key, value in single["model"].items():
            torch.testing.assert_close(ddp["model"][key], value, rtol=1e-5, atol=1e-6)
    assert len(ddp["rng_per_rank"]) == 2
    torch.manual_seed(0)
    initial = TinyDetector(noisy=False)
    moved = 0.0
    for key, value in load_checkpoint(tmp_path / "single" / "first.pth")["model"].items():
        moved = max(moved, float((value - initial.state_dict()[key]).abs().max()))
    assert moved > 1e-3  # the weights did change: the comparison is not trivially equal
    lines = (tmp_path / "ddp" / "metrics.jsonl").read_text()
    assert os.path.getsize(tmp_path / "ddp" / "metrics.jsonl") > 0 and '"type": "train"' in lines
