"""`rcnn train` on bad input: each a one-line error naming the cause, before any training."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rcnn.cli import build_parser, main
from rcnn.cli.train import config_from_args
from rcnn.config import to_dict
from rcnn.engine.checkpoint import save_checkpoint

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
FRUITS = str((DATA / "fruits_nuts").resolve())


def _error(capsys, argv: list[str]) -> str:
    """Run ``rcnn train ARGV``; assert exit code 2 and a single stderr line; return it."""
    code = main(["train", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("rcnn train: error:")]
    assert code == 2, err
    assert len(errors) == 1, err
    return errors[0]


def _checkpoint(tmp_path: Path, argv: list[str], class_names: list[str]) -> Path:
    """A checkpoint whose config is what ``rcnn train ARGV`` resolves to."""
    args = build_parser().parse_args(["train", *argv])
    cfg, _ = config_from_args(args)
    cfg.model.classes = tuple(class_names)
    path = tmp_path / "run" / "last.pth"
    save_checkpoint(path, {"model": {}, "config": to_dict(cfg), "class_names": class_names})
    return path


def test_unknown_network(capsys):
    line = _error(capsys, ["--network", "mask_rcnn_nope"])
    assert "unknown model 'mask_rcnn_nope'; known models:" in line
    assert "mask_rcnn_fpn_resnet50_v1b_coco" in line


def test_missing_dataset_path(capsys, tmp_path):
    missing = tmp_path / "nowhere.json"
    line = _error(capsys, ["--dataset", str(missing)])
    assert line == f"rcnn train: error: --dataset {missing}: no such file or folder"


def test_gpu_that_does_not_exist(capsys):
    line = _error(capsys, ["--gpus", "0,99"])
    assert "--gpus 0,99: GPU" in line and "does not exist" in line


def test_unknown_set_key_and_bad_type(capsys):
    line = _error(capsys, ["--set", "model.rpn.nms=0.5"])
    assert "unknown key 'model.rpn.nms'; valid keys: model.rpn.channels," in line
    line = _error(capsys, ["--batch-size", "two"])
    assert line == "rcnn train: error: config: batch_size expects int, got 'two'"


def test_corrupt_and_half_written_checkpoints(capsys, tmp_path):
    good = _checkpoint(tmp_path, ["--dataset", FRUITS], ["date", "fig", "hazelnut"])
    half = tmp_path / "half.pth"
    half.write_bytes(good.read_bytes()[:200])
    line = _error(capsys, ["--resume", str(half)])
    assert f"checkpoint {half} is corrupt or truncated" in line
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    assert f"checkpoint {empty} is empty" in _error(capsys, ["--resume", str(empty)])


def test_resume_with_a_different_config(capsys, tmp_path):
    ckpt = _checkpoint(tmp_path, ["--dataset", FRUITS], ["date", "fig", "hazelnut"])
    line = _error(capsys, ["--resume", str(ckpt), "--lr", "0.5", "--wd", "0.1"])
    assert f"--resume {ckpt}: this run's config differs from the checkpoint's: lr (" in line
    assert "-> 0.5)" in line and "wd (" in line


def test_classes_that_do_not_match_the_checkpoint(capsys, tmp_path):
    ckpt = _checkpoint(tmp_path, ["--dataset", FRUITS], ["cat", "dog"])
    line = _error(capsys, ["--resume", str(ckpt)])
    assert "['date', 'fig', 'hazelnut'] do not match the checkpoint's ['cat', 'dog']" in line


def test_empty_dataset_after_filtering(capsys, tmp_path):
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "a.png")
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "height": 20, "width": 30}],
        "annotations": [],
        "categories": [{"id": 1, "name": "thing"}],
    }
    path = tmp_path / "empty.json"
    path.write_text(json.dumps(coco))
    line = _error(capsys, ["--dataset", str(path)])
    # the data layer or the runner reports it (whichever sees it first), naming the file
    assert str(path) in line
    assert "no usable images" in line or "the train split has no images after filtering" in line


def test_existing_run_folder_is_not_overwritten(capsys, tmp_path):
    ckpt = _checkpoint(tmp_path, ["--dataset", FRUITS], ["date", "fig", "hazelnut"])
    line = _error(capsys, ["--dataset", FRUITS, "--output", str(ckpt.parent)])
    assert "already holds a run (last.pth); continue it with --resume" in line


@pytest.mark.parametrize("flag", ["--help"])
def test_help_documents_interval_units(capsys, flag):
    with pytest.raises(SystemExit):
        main(["train", flag])
    text = capsys.readouterr().out
    assert "'500it' = every 500 iterations" in text and "--lr-decay-epoch" in text


def _tiny_shapes_args(tmp_path: Path, out: Path) -> list[str]:
    return [
        "--data-root", str(tmp_path / "shapes"),
        "--set", "dataset_options={num_train: 8, num_val: 2, image_size: 128}",
        "--max-iters", "4", "--batch-size", "2", "--log-interval", "1", "--save-interval", "1it",
        "--set", "val_loss_batches=2", "--set", "vis_images=2", "--num-workers", "0",
        "--deterministic", "--output", str(out),
    ]  # fmt: skip


def _train_single_thread(argv: list[str]) -> int:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main(["train", *argv])
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_shapes_run_end_to_end_and_sigkill_resume(capsys, tmp_path):
    """The real model on tiny shapes: the outputs; a SIGKILLed run resumes to the same weights."""
    from rcnn.config import config_from_dict, load_yaml
    from rcnn.engine.checkpoint import load_checkpoint, load_model

    out = tmp_path / "run"
    assert _train_single_thread(_tiny_shapes_args(tmp_path, out)) == 0
    printed = capsys.readouterr().out
    assert "bbox  AP" in printed and "segm  AP" in printed and "wall time" in printed
    final = json.loads((out / "final_metrics.json").read_text())
    assert set(final) == {"bbox", "segm"}
    for kind in ("bbox", "segm"):
        for key in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
            value = final[kind][key]
            assert value is None or 0.0 <= value <= 1.0
    cfg = config_from_dict(load_yaml(out / "config.yaml"))
    assert cfg.max_iters == 4 and cfg.model.classes == ("square", "circle", "triangle")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows if r["type"] == "train"] == [1, 2, 3, 4]
    assert any(r["type"] == "val" and "loss" in r for r in rows)
    assert (out / "predictions.png").stat().st_size > 0
    assert list((out / "tensorboard").iterdir())
    model = load_model(out / "last.pth")
    assert list(model.class_names) == ["square", "circle", "triangle"] and not model.training

    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "rcnn.cli", "train", *_tiny_shapes_args(tmp_path, killed)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "last.pth").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stopped_at = load_checkpoint(killed / "last.pth")["iteration"]
    assert 1 <= stopped_at < 4 and not (killed / "final_metrics.json").exists()
    assert _train_single_thread(["--resume", str(killed)]) == 0
    resumed, reference = load_checkpoint(killed / "last.pth"), load_checkpoint(out / "last.pth")
    assert resumed["iteration"] == 4
    for key, value in reference["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=0, atol=1e-6)
    rows = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows if r["type"] == "train"] == [1, 2, 3, 4]


def test_mask_network_on_box_only_data(capsys):
    raccoon = str((DATA / "raccoon").resolve())
    line = _error(capsys, ["--network", "mask_rcnn_fpn_resnet18_v1b_coco", "--dataset", raccoon])
    assert f"predicts masks but dataset {raccoon} has no masks" in line


def test_recipe_defaults_and_linear_lr_scaling():
    from rcnn.zoo import get_preset

    def resolve(*argv):
        return config_from_args(build_parser().parse_args(["train", *argv]))[0]

    name = "mask_rcnn_fpn_resnet50_v1b_coco"
    recipe = get_preset(name).recipe
    cfg = resolve("--network", name)
    assert (cfg.lr, cfg.batch_size, cfg.epochs) == (recipe["lr"], recipe["batch_size"], 26.0)
    assert cfg.lr_decay_epoch == [17.0, 23.0] and cfg.lr_warmup_factor == pytest.approx(1 / 3)
    half = resolve("--network", name, "--batch-size", str(recipe["batch_size"] // 2))
    assert half.lr == pytest.approx(recipe["lr"] / 2)  # GluonCV: 0.00125 x batch size
    fixed = resolve("--network", name, "--batch-size", "2", "--lr", "0.05")
    assert fixed.lr == 0.05


def test_config_file_then_flags_then_set(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("network: mask_rcnn_fpn_resnet18_v1b_coco\nlr: 0.3\nwd: 0.001\n"
                    "model:\n  rpn:\n    nms_thresh: 0.6\n")  # fmt: skip
    args = ["train", "-c", str(path), "--wd", "0.002", "--set", "wd=0.003", "--epochs", "2"]
    cfg, state = config_from_args(build_parser().parse_args(args))
    assert state is None and cfg.network == "mask_rcnn_fpn_resnet18_v1b_coco"
    assert (cfg.lr, cfg.wd, cfg.epochs) == (0.3, 0.003, 2.0)
    assert cfg.model.rpn.nms_thresh == 0.6 and cfg.model.backbone.name == "resnet18"


def test_every_preset_recipe_resolves():
    from rcnn.zoo import get_preset, list_models

    for name in list_models():
        cfg, _ = config_from_args(build_parser().parse_args(["train", "--network", name]))
        recipe = get_preset(name).recipe
        assert cfg.network == name and cfg.model == get_preset(name).model
        for key, value in recipe.items():
            got = getattr(cfg, key)
            assert got == (list(value) if isinstance(value, tuple) else value), (name, key)


def test_default_is_the_shapes_preset_and_its_options_stay_with_shapes():
    cfg, _ = config_from_args(build_parser().parse_args(["train"]))
    assert cfg.network == "mask_rcnn_shapes" and cfg.dataset == "shapes"
    assert cfg.model.classes == ("square", "circle", "triangle") and cfg.model.mask_on
    assert "num_train" in cfg.dataset_options
    other, _ = config_from_args(build_parser().parse_args(["train", "--dataset", FRUITS]))
    assert other.dataset_options == {}


def test_fast_flag_trains_the_optimized_model():
    from rcnn.engine.runner import build_train_model
    from rcnn.models.fast import FoldedConv2d

    def resolve(*argv):
        return config_from_args(build_parser().parse_args(["train", *argv]))[0]

    name = "mask_rcnn_fpn_resnet18_v1b_coco"  # frozen BN: every body conv folds
    fast, plain = resolve("--network", name, "--fast"), resolve("--network", name)
    assert fast.fast and not plain.fast
    model = build_train_model(fast)
    assert sum(isinstance(m, FoldedConv2d) for m in model.modules()) == 20
    assert model.backbone.body.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert model.state_dict().keys() == build_train_model(plain).state_dict().keys()
    assert not any(isinstance(m, FoldedConv2d) for m in build_train_model(plain).modules())
