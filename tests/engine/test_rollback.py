"""A step that goes non-finite is undone: the saved state is the last one with a finite loss,
bit-equal to a run stopped there; a finished run's metrics travel with its last checkpoint."""

from __future__ import annotations

import torch
from engine_tiny import TinyDetector, TinySet, tiny_config

from rcnn.engine.checkpoint import load_checkpoint
from rcnn.engine.rollback import non_finite_tensors
from rcnn.engine.train import NonFiniteLossError, train
from rcnn.engine.validate import Validator


class InfGradDetector(TinyDetector):
    """From its ``bad_call``-th training forward on, a loss term that is finite (0) but whose
    gradient is NaN (d sqrt(|x|)/dx at x = 0): the step leaves non-finite weights."""

    def __init__(self, bad_call: int) -> None:
        super().__init__(noisy=False)
        self.calls, self.bad_call = 0, bad_call

    def forward(self, images, targets=None):
        out = super().forward(images, targets)
        if targets is not None:
            self.calls += 1
            if self.calls >= self.bad_call:
                delta = self.box.bias - self.box.bias.detach()
                out["loss_sqrt"] = torch.sqrt(delta.abs().sum())
        return out


def _single_thread_train(*args, **kwargs):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(*args, **kwargs)
    finally:
        torch.set_num_threads(threads)


def test_non_finite_weights_roll_back_to_the_last_finite_state(tmp_path):
    cfg = tiny_config(max_iters=10, save_interval="0")
    torch.manual_seed(0)
    model = InfGradDetector(bad_call=5)
    try:
        _single_thread_train(cfg, model, TinySet(8), run_dir=tmp_path / "bad")
    except NonFiniteLossError as error:
        text = str(error)
    else:
        raise AssertionError("no error")
    assert text.startswith("non-finite weights after the step of iteration 5 (")
    assert "rolled back to the last state with a finite loss (iteration 4)" in text
    saved = load_checkpoint(tmp_path / "bad" / "last.pth")
    assert saved["iteration"] == 4
    # the reference: the same run stopped after 4 iterations (same init, data, RNG)
    torch.manual_seed(0)
    _single_thread_train(
        tiny_config(max_iters=4, save_interval="0"),
        InfGradDetector(bad_call=99),
        TinySet(8),
        run_dir=tmp_path / "ref",
    )
    reference = load_checkpoint(tmp_path / "ref" / "last.pth")
    for key, value in reference["model"].items():
        assert torch.equal(saved["model"][key], value), key
    ref_state = reference["optimizer"]["state"]
    for index, entry in saved["optimizer"]["state"].items():
        assert torch.equal(entry["momentum_buffer"], ref_state[index]["momentum_buffer"])
    assert saved["scheduler"] == reference["scheduler"]
    assert torch.equal(saved["rng"]["torch"], reference["rng"]["torch"])


def test_non_finite_tensors_names_them():
    model = TinyDetector()
    assert non_finite_tensors(model) == []
    with torch.no_grad():
        model.box.weight[0, 0] = float("nan")
        model.cls.bias[1] = float("inf")
    assert sorted(non_finite_tensors(model)) == ["box.weight", "cls.bias"]
    with torch.no_grad():
        model.box.weight.fill_(1e30)  # huge but finite: not reported
        model.cls.bias.zero_()
    assert non_finite_tensors(model) == []


def test_resuming_a_finished_run_returns_its_final_metrics(tmp_path):
    validator = Validator(
        TinySet(4), evaluate_fn=lambda m, d, c: {"bbox": {"AP": 0.25}}, metric_fn=lambda m: 0.25
    )
    cfg = tiny_config(max_iters=4, val_interval="0")
    first = train(cfg, TinyDetector(), TinySet(8), run_dir=tmp_path, validator=validator)
    assert first.metrics == {"bbox": {"AP": 0.25}}
    state = load_checkpoint(tmp_path / "last.pth")
    assert state["metrics"] == {"bbox": {"AP": 0.25}} and state["iteration"] == 4
    # a kill after last.pth and before final_metrics.json: the resume finds nothing left to train
    again = train(
        cfg, TinyDetector(), TinySet(8), run_dir=tmp_path, validator=validator, resume_state=state
    )
    assert again.iterations == 4 and again.metrics == {"bbox": {"AP": 0.25}}
