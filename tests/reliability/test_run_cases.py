"""`rcnn train`, `eval` and `predict` on broken inputs and faults, in-process: no traceback, the
right exit code (2: bad input, 1: an output that cannot be written) and a one-line message.

One real (tiny) training run on a dataset broken in the ways training must survive (an
unreadable train image and val image, a garbage crowd RLE, a halved width/height) makes the
checkpoint the eval and predict cases use.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from reliability_files import (
    HEIGHT,
    WIDTH,
    coco_dataset,
    flip_tensor_bytes,
    picture,
    run_cli,
    save,
    truncate,
)

from rcnn.cli import main

TINY = [
    "--max-iters", "1", "--batch-size", "1", "--num-workers", "0", "--set", "val_loss_batches=1",
    "--set", "vis_images=1", "--set", "model.input.train_short=[64]",
    "--set", "model.input.test_short=64", "--set", "model.input.max_size=96",
]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, Path]:
    """A 1-iteration run of the shapes network on 14 images: #3 and #14 (val) unreadable, a
    garbage crowd RLE, image 2's width/height halved in the json."""
    root = tmp_path_factory.mktemp("rel") / "ds"
    data = coco_dataset(root, n=14)
    data["annotations"].append(
        {"id": 99, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "iscrowd": 1,
         "segmentation": {"size": [HEIGHT, WIDTH], "counts": "garbage!"}}
    )  # fmt: skip
    data["images"][1].update(width=WIDTH // 2, height=HEIGHT // 2)
    save(root, data)
    truncate(root / "images" / "im3.png")
    truncate(root / "images" / "im14.png")
    out = root.parent / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = main(["train", "--dataset", str(root), "--output", str(out), *TINY])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    return {"root": root, "out": out, "ckpt": out / "last.pth"}


def test_training_survives_repairable_data(run):
    final = json.loads((run["out"] / "final_metrics.json").read_text())
    assert set(final) == {"bbox", "segm"}  # validation ran, the unreadable val image skipped
    state = torch.load(run["ckpt"], weights_only=True)
    assert state["checksum"].startswith("sha256:") and state["metrics"]["bbox"]["AP"] >= 0


# (id, extra train arguments, text of the one error line); all exit 2 before any training
TRAIN_USAGE = [
    ("momentum", ["--momentum", "-1"], "config: momentum=-1.0 is out of range [0, 1)"),
    ("max_size", ["--set", "model.input.max_size=0"], "model.input.max_size=0 is out of range"),
    ("train_short", ["--set", "model.input.train_short=[0]"], "train_short=[0] is out of range"),
    ("no_sizes", ["--set", "model.input.train_short=[]"], "train_short=[] needs at least one"),
    ("wd", ["--wd", "-1"], "config: wd=-1.0 is out of range [0, inf)"),
    ("nms", ["--set", "model.rpn.nms_thresh=5"], "model.rpn.nms_thresh=5.0 is out of range (0, 1]"),
    ("iou", ["--set", "model.roi_heads.x=1"], "unknown key 'model.roi_heads'"),
    ("fg_iou", ["--set", "model.rpn.fg_iou_thresh=1.5"], "fg_iou_thresh=1.5 is out of range"),
    ("lr_text", ["--lr", "abc"], "config: lr expects float, got 'abc'"),
    ("lr_nan", ["--lr", ".nan"], "config: lr=nan must be a finite number"),
    ("lr_zero", ["--lr", "0"], "config: lr=0.0 is out of range (0, inf)"),
    ("batch", ["--batch-size", "0"], "config: batch_size=0 is out of range [1, inf)"),
    ("epochs", ["--epochs", "-1"], "config: epochs=-1.0 is out of range [0, inf)"),
    ("decay", ["--lr-decay", "2"], "config: lr_decay=2.0 is out of range (0, 1]"),
    ("decay_epoch", ["--lr-decay-epoch", "-1"], "lr_decay_epoch=[-1.0] is out of range"),
    ("amp", ["--set", "amp=fp8"], "config: amp=fp8 must be one of"),
    ("norm", ["--set", "model.backbone.norm=layer"], "model.backbone.norm=layer must be one of"),
    ("detections", ["--set", "model.box_head.detections_per_img=0"], "range [1, inf) or -1"),
    ("workers", ["--num-workers", "-2"], "num_workers=-2 is out of range"),
    ("interval", ["--save-interval", "soon"], "save_interval='soon' is not an interval"),
    ("option", ["--set", "dataset_options={foo: 1}"], "unknown option 'foo'"),
]  # fmt: skip


@pytest.mark.parametrize("name,argv,message", TRAIN_USAGE, ids=[c[0] for c in TRAIN_USAGE])
def test_train_rejects_bad_values(tmp_path, capsys, name, argv, message):
    root = tmp_path / "ds"
    coco_dataset(root)
    code, _, err = run_cli(capsys, ["train", "--dataset", root, "--output", tmp_path / "o", *argv])
    assert code == 2 and message in err, err
    assert not (tmp_path / "o" / "last.pth").exists()


def test_scientific_notation_is_a_float():
    from rcnn.cli import build_parser
    from rcnn.cli.train import config_from_args

    args = build_parser().parse_args(
        ["train", "--lr", "1e-3", "--wd", "1E-4", "--momentum", "9e-1"]
    )
    cfg, _ = config_from_args(args)
    assert (cfg.lr, cfg.wd, cfg.momentum) == (0.001, 0.0001, 0.9)


def _bad_dataset(kind: str, root: Path) -> None:
    coco_dataset(root)
    if kind == "missing_image":
        (root / "images" / "im2.png").unlink()
    elif kind == "not_json":
        (root / "ann.json").write_text("{")


@pytest.mark.parametrize(
    "kind,message",
    [("missing_image", "im2.png: image file not found"), ("not_json", "not valid JSON")],
)
def test_train_rejects_bad_data_before_training(tmp_path, capsys, kind, message):
    _bad_dataset(kind, tmp_path / "ds")
    code, _, err = run_cli(capsys, ["train", "--dataset", tmp_path / "ds", *TINY])
    assert code == 2 and message in err


def test_train_output_or_resume_that_cannot_work(tmp_path, capsys, run):
    root = tmp_path / "ds"
    coco_dataset(root)
    a_file = tmp_path / "taken.txt"
    a_file.write_text("x")
    code, _, err = run_cli(capsys, ["train", "--dataset", root, "--output", a_file, *TINY])
    assert code == 2 and f"--output {a_file}: is an existing file, not a folder" in err
    flipped = tmp_path / "flipped.pth"
    flip_tensor_bytes(run["ckpt"], flipped)
    code, _, err = run_cli(capsys, ["train", "--resume", flipped])
    assert code == 2 and f"checkpoint {flipped} is corrupt: its content does not match" in err
    code, _, err = run_cli(capsys, ["train", "--dataset", tmp_path / "nowhere", *TINY])
    assert code == 2 and "no such file or folder" in err


def test_train_disk_full_is_one_line_and_leaves_nothing_half_written(tmp_path, capsys, monkeypatch):
    root, out = tmp_path / "ds", tmp_path / "out"
    coco_dataset(root)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("rcnn.fileio.os.replace", full)
    code, _, err = run_cli(capsys, ["train", "--dataset", root, "--output", out, *TINY])
    assert code == 1
    assert f"cannot write config.yaml in folder {out}: no space left on the disk (ENOSPC)" in err
    assert list(out.iterdir()) == []  # the temporary file was removed


def test_unwritable_output_folder(tmp_path, capsys, monkeypatch):
    root = tmp_path / "ds"
    coco_dataset(root)
    denied = tmp_path / "ro" / "out"
    if os.geteuid() != 0:  # a real read-only folder (root writes anyway: simulated below)
        denied.parent.mkdir()
        denied.parent.chmod(0o500)
    else:
        real_mkdir = Path.mkdir

        def mkdir(self, *args, **kwargs):
            if self == denied:
                raise PermissionError(errno.EACCES, "Permission denied", str(self))
            return real_mkdir(self, *args, **kwargs)

        monkeypatch.setattr(Path, "mkdir", mkdir)
    try:
        code, _, err = run_cli(capsys, ["train", "--dataset", root, "--output", denied, *TINY])
    finally:
        if denied.parent.exists():
            denied.parent.chmod(0o700)
    assert code == 1 and f"--output {denied}: cannot create the folder: permission denied" in err


def test_relative_dataset_resumes_from_another_folder(tmp_path, monkeypatch, run):
    from rcnn.cli import build_parser
    from rcnn.cli.train import config_from_args

    monkeypatch.chdir(run["root"].parent)
    args = build_parser().parse_args(["train", "--dataset", "ds", *TINY])
    cfg, _ = config_from_args(args)
    assert cfg.dataset == str(run["root"])  # stored absolute in config.yaml and checkpoints
    monkeypatch.chdir(tmp_path)
    resumed, state = config_from_args(
        build_parser().parse_args(["train", "--resume", str(run["ckpt"])])
    )
    assert resumed.dataset == str(run["root"]) and state["iteration"] == 1


# ------------------------------------------------------------------------------------------------
# eval


def _results(tmp_path: Path, entries: list[dict]) -> Path:
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(entries))
    return path


GOOD = {"image_id": 1, "category_id": 1, "bbox": [20, 10, 24, 20], "score": 0.9}
RESULTS = [
    ("nan_score", [{**GOOD, "score": float("nan")}], "entry 0: score must be a finite number"),
    ("inf_box", [GOOD, {**GOOD, "bbox": [1, 2, float("inf"), 3]}], "entry 1: bbox"),
    ("negative_width", [{**GOOD, "bbox": [20, 10, -24, 20]}], "negative width or height"),
    ("string_score", [{**GOOD, "score": "high"}], "score must be a finite number"),
    ("no_bbox", [{k: v for k, v in GOOD.items() if k != "bbox"}], "entry 0 lacks bbox"),
    ("unknown_image", [{**GOOD, "image_id": 404}], "image id(s) not in the ground truth"),
    ("unknown_category", [{**GOOD, "category_id": 9}], "category id(s) not in the ground truth"),
    ("not_a_list", {"a": 1}, "expected a json list"),
    ("garbage_rle", [{**GOOD, "segmentation": {"size": [HEIGHT, WIDTH], "counts": "garbage"}}],
     "entry 0 (image 1): segmentation is not a mask of its 80x64 image"),
    ("rle_other_size", [{**GOOD, "segmentation": {"size": [10, 10], "counts": "PP"}}],
     "segmentation is not a mask"),
    ("short_polygon", [{**GOOD, "segmentation": [[1, 2, 3]]}], "segmentation is not a mask"),
]  # fmt: skip


@pytest.mark.parametrize("name,entries,message", RESULTS, ids=[c[0] for c in RESULTS])
def test_eval_rejects_bad_results_files(tmp_path, capsys, name, entries, message):
    root = tmp_path / "ds"
    coco_dataset(root)
    path = _results(tmp_path, entries)
    code, _, err = run_cli(capsys, ["eval", "--results", path, "--coco", root / "ann.json"])
    assert code == 2 and message in err and str(path) in err, err


def test_eval_scores_a_good_results_file(tmp_path, capsys):
    root = tmp_path / "ds"
    coco_dataset(root)
    entries = [{**GOOD, "image_id": i} for i in range(1, 7)]
    path = _results(tmp_path, entries)
    code, out, _ = run_cli(
        capsys, ["eval", "--results", path, "--coco", root / "ann.json", "--json"]
    )
    assert code == 0 and json.loads(out)["bbox"]["AP"] == pytest.approx(1.0)


def _no_cuda_device() -> tuple[str, str]:
    if torch.cuda.is_available():
        return "cuda:99", "there are only"
    return "cuda", "CUDA is not available on this machine"


EVAL_USAGE = [
    ("batch", ["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    ("workers", ["--num-workers", "-1"], "--num-workers must be >= 0"),
    ("max_images", ["--max-images", "-3"], "--max-images must be >= 0"),
    ("score", ["--score-thresh", "1.5"], "--score-thresh must be in [0, 1]"),
    ("device", ["--device", _no_cuda_device()[0]], _no_cuda_device()[1]),
    ("not_a_device", ["--device", "banana"], "--device banana: not a device"),
]  # fmt: skip


@pytest.mark.parametrize("name,argv,message", EVAL_USAGE, ids=[c[0] for c in EVAL_USAGE])
def test_eval_rejects_bad_values(capsys, run, name, argv, message):
    argv = ["eval", "--checkpoint", run["ckpt"], "--dataset", run["root"], *argv]
    code, _, err = run_cli(capsys, argv)
    assert code == 2 and message in err, err


def test_eval_skips_and_counts_an_unreadable_image(capsys, caplog, run, tmp_path):
    caplog.set_level(logging.WARNING)
    argv = ["eval", "--checkpoint", run["ckpt"], "--dataset", run["root"], "--json"]
    code, out, _ = run_cli(capsys, [*argv, "--output", tmp_path / "o"])
    assert code == 0 and "bbox" in json.loads(out)
    assert "1 unreadable image(s) skipped (not predicted, not scored)" in caplog.text
    assert (tmp_path / "o" / "final_metrics.json").is_file()
    assert not list((tmp_path / "o").glob(".*.tmp"))


def test_eval_with_no_readable_image(tmp_path, capsys, run):
    root = tmp_path / "ds"
    shutil.copytree(run["root"], root)
    truncate(root / "images" / "im13.png")
    code, _, err = run_cli(capsys, ["eval", "--checkpoint", run["ckpt"], "--dataset", root])
    assert code == 2 and "none of the 2 images could be read" in err


def test_eval_broken_checkpoints_and_outputs(tmp_path, capsys, run):
    base = ["eval", "--dataset", run["root"], "--checkpoint"]
    flipped, half, text = tmp_path / "f.pth", tmp_path / "h.pth", tmp_path / "t.pth"
    flip_tensor_bytes(run["ckpt"], flipped)
    half.write_bytes(run["ckpt"].read_bytes()[:5000])
    text.write_text("not a checkpoint")
    cases = [
        (flipped, "does not match its checksum"),
        (half, "is corrupt or truncated"),
        (text, "is corrupt or truncated"),
        (tmp_path / "none.pth", "does not exist"),
    ]
    for path, message in cases:
        code, _, err = run_cli(capsys, [*base, path])
        assert code == 2 and f"checkpoint {path}" in err and message in err, err
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    code, _, err = run_cli(capsys, [*base, run["ckpt"], "--output", a_file])
    assert code == 2 and "is an existing file, not a folder" in err


def test_eval_disk_full_while_writing_metrics(tmp_path, capsys, monkeypatch, run):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("rcnn.fileio.os.replace", full)
    out = tmp_path / "o"
    argv = ["eval", "--checkpoint", run["ckpt"], "--dataset", run["root"], "--output", out]
    code, _, err = run_cli(capsys, argv)
    assert code == 1 and f"in folder {out}: no space left on the disk (ENOSPC)" in err
    assert not list(out.glob(".*.tmp"))


# ------------------------------------------------------------------------------------------------
# predict


def _inputs(folder: Path) -> Path:
    folder.mkdir(parents=True)
    Image.fromarray(picture()).save(folder / "good.png")
    gray = np.zeros((HEIGHT, WIDTH), np.float32)
    gray[10:30, 20:44] = 1.0
    Image.fromarray(gray, mode="F").save(folder / "float.tif")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    return folder


def test_predict_skips_unreadable_images(tmp_path, capsys, run):
    folder = _inputs(tmp_path / "in")
    argv = ["predict", folder, "--checkpoint", run["ckpt"], "--output", tmp_path / "out"]
    code, out, _ = run_cli(capsys, argv)
    assert code == 0 and "2 images" in out and "1 unreadable skipped" in out
    images = json.loads((tmp_path / "out" / "images.json").read_text())
    assert sorted(Path(i["file_name"]).name for i in images) == ["float.tif", "good.png"]


PREDICT_USAGE = [
    ("only_unreadable", ["{in}/broken.jpg"], [], "none of the 1 input images could be read"),
    ("missing_input", ["{in}/nope.png"], [], "no such file or folder"),
    ("batch", ["{in}"], ["--batch-size", "0"], "--batch-size must be at least 1"),
    ("threshold", ["{in}"], ["--threshold", "1.5"], "--threshold must be in [0, 1]"),
    ("output_is_a_file", ["{in}"], ["--output", "{in}/good.png"], "is an existing file"),
    ("device", ["{in}"], ["--device", _no_cuda_device()[0]], _no_cuda_device()[1]),
]  # fmt: skip


@pytest.mark.parametrize(
    "name,inputs,argv,message", PREDICT_USAGE, ids=[c[0] for c in PREDICT_USAGE]
)
def test_predict_rejects_bad_input(tmp_path, capsys, run, name, inputs, argv, message):
    folder = str(_inputs(tmp_path / "in"))
    fill = [a.replace("{in}", folder) for a in (*inputs, *argv)]
    args = ["predict", *fill[: len(inputs)], "--checkpoint", run["ckpt"]]
    extra = fill[len(inputs) :]
    if "--output" not in extra:
        extra += ["--output", str(tmp_path / "out")]
    code, _, err = run_cli(capsys, [*args, *extra])
    assert code == 2 and message in err, err


def test_predict_disk_full_while_drawing(tmp_path, capsys, monkeypatch, run):
    folder = _inputs(tmp_path / "in")

    def full(self, *args, **kwargs):  # an overlay write that fails the way a full disk does
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    argv = ["predict", folder / "good.png", "--checkpoint", run["ckpt"], "--output", tmp_path / "o"]
    code, _, err = run_cli(capsys, argv)
    assert code == 1 and "rcnn predict: error: no space left on the disk" in err
