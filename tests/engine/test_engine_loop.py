"""The training loop on the stand-in detector: SIGKILL + resume, non-finite loss, validation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from engine_tiny import TinyDetector, TinySet, tiny_config

from rcnn.data.loader import TrainBatchSampler
from rcnn.engine.checkpoint import load_checkpoint
from rcnn.engine.train import NonFiniteLossError, train
from rcnn.engine.validate import Validator

HERE = Path(__file__).resolve().parent


def _deterministic_run(run_dir: Path, iters: int) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(0)
    try:
        train(
            tiny_config(max_iters=iters, save_interval="2it"),
            TinyDetector(),
            TinySet(8),
            run_dir=run_dir,
        )
    finally:
        torch.use_deterministic_algorithms(False)
        torch.set_num_threads(threads)
    return load_checkpoint(run_dir / "last.pth")


def test_sigkill_then_resume_gives_the_uninterrupted_weights(tmp_path):
    iters = 12
    reference = _deterministic_run(tmp_path / "ref", iters)
    run_dir = tmp_path / "killed"
    script = [sys.executable, str(HERE / "run_tiny.py"), str(run_dir), "--iters", str(iters)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([*script, "--delay", "0.25"], env=env, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not (run_dir / "last.pth").exists() and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # kill mid-run, possibly during the next save
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "done").exists(), "the run finished before it was killed"
    killed_at = load_checkpoint(run_dir / "last.pth")["iteration"]
    assert 2 <= killed_at < iters
    subprocess.run([*script, "--resume"], env=env, check=True, stderr=subprocess.DEVNULL)
    resumed = load_checkpoint(run_dir / "last.pth")
    assert resumed["iteration"] == iters
    for key, value in reference["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=0, atol=1e-6)
    ref_momentum = reference["optimizer"]["state"][0]["momentum_buffer"]
    torch.testing.assert_close(
        resumed["optimizer"]["state"][0]["momentum_buffer"], ref_momentum, rtol=0, atol=1e-6
    )
    assert resumed["scheduler"] == reference["scheduler"]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # logged every 4 iterations; rows written after the checkpoint by the killed run are replaced
    assert [r["iteration"] for r in rows if r["type"] == "train"] == [4, 8, 12]
    assert not list(run_dir.glob(".*.tmp"))


def _first_iteration_with(index: int, cfg) -> int:
    """Independent of the loop: the sampler's first batch holding ``index`` (1-based)."""
    sampler = TrainBatchSampler([1.0] * 8, cfg.batch_size, seed=cfg.seed)
    for iteration, batch in enumerate(sampler, start=1):
        if index in [i for i, _ in batch]:
            return iteration
    raise AssertionError


def test_non_finite_loss_stops_with_iteration_terms_and_ids(tmp_path):
    cfg = tiny_config(max_iters=40, save_interval="0")
    bad_at = _first_iteration_with(3, cfg)
    with pytest.raises(NonFiniteLossError) as info:
        train(cfg, TinyDetector(), TinySet(8, bad_ids=(3,)), run_dir=tmp_path)
    text = str(info.value)
    assert f"non-finite loss at iteration {bad_at}: loss_box=inf" in text
    assert "loss_cls=" in text and "103" in text and str(tmp_path / "last.pth") in text
    saved = load_checkpoint(tmp_path / "last.pth")
    # the last state known to give a finite loss: the start of the step before the bad one
    assert saved["iteration"] == max(bad_at - 2, 0)
    assert (
        f"rolled back to the last state with a finite loss (iteration {max(bad_at - 2, 0)})" in text
    )
    assert all(torch.isfinite(v).all() for v in saved["model"].values())


def test_validation_keeps_best_stops_early_and_leaves_bn_stats(tmp_path):
    scores = iter([0.5, 0.7, 0.69, 0.6, 0.9])
    calls = []

    def evaluate(model, dataset, ctx):
        assert not model.training
        calls.append(len(dataset))
        return {"bbox": {"AP": next(scores)}}

    model = TinyDetector(batch_norm=True)
    validator = Validator(
        TinySet(4),
        evaluate_fn=evaluate,
        metric_fn=lambda m: m["bbox"]["AP"],
        loss_dataset=TinySet(4),
        loss_batches=3,
    )
    running = model.norm.running_mean.clone()
    cfg = tiny_config(max_iters=20, val_interval="2it", early_stop_patience=2)
    result = train(cfg, model, TinySet(8), run_dir=tmp_path, validator=validator)
    # AP 0.5 (it 2), 0.7 (it 4, best), 0.69 and 0.6 (no improvement > 0.001): stop at it 8
    assert result.stopped_early and result.iterations == 8
    assert result.best_metric == 0.7 and result.best_iteration == 4
    assert load_checkpoint(tmp_path / "best.pth")["iteration"] == 4
    assert load_checkpoint(tmp_path / "last.pth")["iteration"] == 8
    assert calls == [4, 4, 4, 4]
    assert set(result.metrics["loss"]) == {"loss_cls", "loss_box", "loss"}
    assert not torch.equal(model.norm.running_mean, running)  # training moved the stats ...
    before = model.norm.running_mean.clone()
    model.eval()
    validator.run(model, _ctx())
    assert torch.equal(model.norm.running_mean, before)  # ... validation did not


def _ctx():
    from rcnn.engine.distributed import DistContext

    return DistContext()


def test_gradient_accumulation_equals_the_full_batch(tmp_path):
    full = tiny_config(max_iters=3, batch_size=4)
    accum = tiny_config(max_iters=3, batch_size=4, accumulate=2)
    torch.manual_seed(0)
    model_a = TinyDetector(noisy=False)
    model_b = TinyDetector(noisy=False)
    model_b.load_state_dict(model_a.state_dict())
    batches = list(_fixed_batches(4, 3))

    def loader(batch_size):
        def make(dataset, **kwargs):
            assert kwargs["batch_size"] == batch_size
            return iter([b[i : i + batch_size] for b in batches for i in range(0, 4, batch_size)])

        return make

    train(full, model_a, TinySet(8), run_dir=tmp_path / "a", loader_fn=_as_batches(loader(4)))
    train(accum, model_b, TinySet(8), run_dir=tmp_path / "b", loader_fn=_as_batches(loader(2)))
    for a, b in zip(model_a.parameters(), model_b.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _fixed_batches(size: int, count: int):
    data = TinySet(8)
    for step in range(count):
        yield [data[(step * size + i) % 8] for i in range(size)]


def _as_batches(make):
    def loader_fn(dataset, **kwargs):
        for samples in make(dataset, **kwargs):
            yield [s[0] for s in samples], [s[1] for s in samples]

    return loader_fn


def test_resume_trims_metrics_after_the_checkpoint_and_partial_lines(tmp_path):
    from rcnn.engine.log import RunLogger

    path = tmp_path / "metrics.jsonl"
    rows = [{"type": "train", "iteration": i, "loss": 1.0} for i in (2, 4, 6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"type": "tra')
    log = RunLogger(tmp_path, max_iters=10, start_iter=4, log_interval=2)
    log.log_step(6, {"loss": 0.25}, 0.1, 2)
    log.close()
    again = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["iteration"], r["loss"]) for r in again] == [(2, 1.0), (4, 1.0), (6, 0.25)]
