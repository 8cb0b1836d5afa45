"""``--amp`` in ``rcnn train / eval / predict`` on the CPU (bf16 is emulated on processors without
it, so the runs are tiny), and ``rcnn eval`` re-scoring a run on the run's own validation data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rcnn.cli import build_parser, main
from rcnn.cli.eval import run_validation_data

# tiny shapes: their own seed and counts (not the defaults), validated on the first 5 val images
SHAPES = "dataset_options={seed: 7, num_train: 16, num_val: 8, image_size: 128}"


def train_args(root: Path, out: Path, iters: int) -> list[str]:
    return [
        "train", "--data-root", str(root / "shapes"), "--set", SHAPES, "--max-iters", str(iters),
        "--batch-size", "4", "--log-interval", "10", "--val-max-images", "5",
        "--set", "val_loss_batches=1", "--set", "vis_images=1", "--num-workers", "0",
        "--output", str(out),
    ]  # fmt: skip


def eval_json(capsys, argv: list[str]) -> dict:
    capsys.readouterr()
    assert main(["eval", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A float32 run of 4 steps on tiny shapes (its AP is 0: too short to learn)."""
    root = tmp_path_factory.mktemp("amp_cli")
    torch.manual_seed(0)
    assert main(train_args(root, root / "run", 4)) == 0
    return root / "run"


def test_eval_rescores_a_run_on_its_own_validation_data(run, capsys):
    """The run's data root, shapes options and val_max_images, unless told otherwise; the same
    metrics as the run's final_metrics.json."""
    checkpoint = str(run / "last.pth")
    args = build_parser().parse_args(["eval", "--checkpoint", checkpoint, "--dataset", "shapes"])
    options = {"seed": 7, "num_train": 16, "num_val": 8, "image_size": 128}
    assert run_validation_data(args) == (str(run.parent / "shapes"), options, 5)
    args.max_images, args.data_root = 0, "elsewhere"
    assert run_validation_data(args) == ("elsewhere", options, 0)
    args.split = "train"
    assert run_validation_data(args) == ("elsewhere", {}, 0)
    args.split, args.dataset = "val", "coco"
    assert run_validation_data(args) == ("elsewhere", {}, 0)
    final = json.loads((run / "final_metrics.json").read_text())
    again = eval_json(capsys, ["--checkpoint", checkpoint, "--dataset", "shapes"])
    for kind in ("bbox", "segm"):
        assert {k: again[kind][k] for k in final[kind]} == final[kind], kind


def test_amp_bf16_train_eval_predict_on_the_cpu(run, tmp_path, capsys):
    """bf16 autocast end to end: training 2 steps (the RoIAlign self-check runs inside it), then
    evaluating and predicting with ``--amp bf16``."""
    from rcnn.ops import roi_align

    roi_align.sparse_backward_is_exact.cache_clear()  # first use inside autocast
    argv = train_args(tmp_path, tmp_path / "bf16", 2)
    assert main([*argv, "--amp", "bf16", "--set", "model.box_head.sampling_ratio=2"]) == 0
    assert (tmp_path / "bf16" / "final_metrics.json").exists()
    checkpoint = ["--checkpoint", str(run / "last.pth"), "--dataset", "shapes"]
    bf16 = eval_json(capsys, [*checkpoint, "--amp", "bf16", "--max-images", "2"])
    assert set(bf16) == {"bbox", "segm"}  # (agreement with float32: tests/models/test_amp.py)
    images = sorted((run.parent / "shapes").rglob("*.png"))[:2]
    out = tmp_path / "predicted"
    argv = [
        "predict",
        *map(str, images),
        "--checkpoint",
        str(run / "last.pth"),
        "--output",
        str(out),
    ]
    assert main([*argv, "--amp", "bf16", "--threshold", "0.01"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert len(list(out.glob("*.png"))) == 2 and all(r["score"] >= 0.01 for r in results)
    assert main([*argv, "--amp", "fp16"]) == 2
    assert "--amp fp16 needs a GPU" in capsys.readouterr().err


def test_cpu_bf16_training_gets_channels_last(monkeypatch):
    """bf16 convolutions pay on the CPU only in channels-last, so ``--amp`` that resolves to bf16
    there trains the optimised model; float32 (``auto`` without native bf16) the plain one."""
    from rcnn.cli.train import config_from_args
    from rcnn.engine.runner import build_train_model
    from rcnn.ops import precision

    def body_is_channels_last(*argv: str) -> bool:
        cfg = config_from_args(build_parser().parse_args(["train", *argv]))[0]
        conv = build_train_model(cfg).backbone.body.conv1.weight
        return conv.is_contiguous(memory_format=torch.channels_last)

    assert body_is_channels_last("--amp", "bf16")
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    assert not body_is_channels_last("--amp", "auto") and not body_is_channels_last()
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    assert body_is_channels_last("--amp")
