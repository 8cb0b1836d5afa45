"""`rcnn train | eval | predict` end to end on the real sample datasets, each in a subprocess.

raccoon (Pascal VOC xml + split csv, Faster R-CNN FPN) and balloon (COCO json with polygons,
ids from 0, Mask R-CNN FPN), both shrunk to ResNet-18, 128 px and a few RoIs so that the whole
module runs in about a minute and a half on 2 CPU cores. One training run per dataset (3
iterations, validation on the full val split at the end) is shared by the tests below; the resume
test continues a copy of it.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from rcnn.config import config_from_dict, load_yaml
from rcnn.engine.checkpoint import load_checkpoint, load_model

DATA = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data").resolve()
COCO_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
ITERS = 3

# The smallest model that still runs every stage: FPN levels, RPN, box head (and mask head).
TINY = [
    "model.backbone.name=resnet18",
    "model.backbone.pretrained_base=false",
    "model.input.train_short=[128]",
    "model.input.test_short=128",
    "model.input.max_size=192",
    "model.fpn.out_channels=64",
    "model.rpn.pre_nms_topk=[200,100]",
    "model.rpn.post_nms_topk=[100,50]",
    "model.box_head.batch_size_per_image=64",
    "model.box_head.fc_dim=128",
    "model.box_head.detections_per_img=10",
    "model.mask_head.conv_dim=64",
    "val_loss_batches=2",
    "vis_images=2",
    "lr_warmup=0",
]
CASES = {
    "raccoon": {
        "network": "faster_rcnn_fpn_resnet50_v1b_coco",
        "metrics": ("voc07", "voc12"),
        "losses": ("loss_rpn_cls", "loss_rpn_box", "loss_rcnn_cls", "loss_rcnn_box"),
    },
    "balloon": {
        "network": "mask_rcnn_fpn_resnet50_v1b_coco",
        "metrics": ("bbox", "segm"),
        "losses": ("loss_rpn_cls", "loss_rpn_box", "loss_rcnn_cls", "loss_rcnn_box", "loss_mask"),
    },
}

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"no sample data at {DATA}")


def rcnn_cli(*argv: str) -> subprocess.CompletedProcess:
    """``python -m rcnn.cli ARGV`` on the CPU; a non-zero exit fails with its stderr's tail.

    One torch thread: two threads spin-wait on a busy 2-core machine (25x slower, measured).
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "rcnn.cli", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"rcnn {' '.join(argv)} exited {proc.returncode}:\n" + "\n".join(
        proc.stderr.splitlines()[-15:]
    )
    return proc


def train_argv(name: str, output: Path) -> list[str]:
    sets = [item for pair in (("--set", s) for s in TINY) for item in pair]
    return [
        "train", "--network", CASES[name]["network"], "--dataset", str(DATA / name),
        "--output", str(output), "--max-iters", str(ITERS), "--batch-size", "2",
        "--num-workers", "0", "--log-interval", "1", *sets,
    ]  # fmt: skip


@pytest.fixture(scope="module", params=sorted(CASES))
def run(request, tmp_path_factory) -> tuple[str, Path]:
    """``(dataset name, run folder)`` of a finished 3-iteration training run."""
    name = request.param
    output = tmp_path_factory.mktemp(name) / "run"
    proc = rcnn_cli(*train_argv(name, output))
    assert f"run folder: {output}" in proc.stdout
    assert f"{ITERS} iterations" in proc.stdout
    return name, output


def val_images(name: str, count: int = 2) -> list[Path]:
    """The first val images, read from the dataset's own split files (not through rcnn)."""
    if name == "raccoon":
        with open(DATA / name / "splits" / "test_labels.csv", newline="") as handle:
            files = list(dict.fromkeys(row["filename"] for row in csv.DictReader(handle)))
        return [DATA / name / "images" / f for f in files[:count]]
    return sorted((DATA / name / "val2017").glob("*.jpg"))[:count]


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_close_tree(actual, expected, where: str = "") -> None:
    """Equal nested dicts; floats to 1e-6, nulls (COCO's absent size ranges) must match."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and set(actual) == set(expected), where
        for key in expected:
            assert_close_tree(actual[key], expected[key], f"{where}.{key}")
    elif expected is None:
        assert actual is None, where
    else:
        assert actual == pytest.approx(expected, abs=1e-6), where


def check_unit(value, where: str) -> None:
    assert value is None or (isinstance(value, float) and 0.0 <= value <= 1.0), (where, value)


def check_final_layout(name: str, final: dict) -> None:
    assert set(final) == set(CASES[name]["metrics"])
    for kind, table in final.items():
        if name == "raccoon":  # VOC07 11-point and VOC12 area mAP, one class
            assert set(table) == {"mAP", "per_class"}
            check_unit(table["mAP"], kind)
        else:
            assert set(COCO_STATS) <= set(table), (kind, sorted(table))
            for stat in COCO_STATS:
                check_unit(table[stat], f"{kind}.{stat}")
        assert set(table["per_class"]) == {name}
        for cls, value in table["per_class"].items():
            check_unit(value, f"{kind}.per_class.{cls}")


def test_train_writes_the_run_folder(run):
    name, out = run
    cfg = config_from_dict(load_yaml(out / "config.yaml"))
    assert cfg.network == CASES[name]["network"] and cfg.dataset == str(DATA / name)
    assert cfg.max_iters == ITERS and cfg.model.backbone.name == "resnet18"
    assert cfg.model.classes == (name,) and cfg.model.mask_on == (name == "balloon")
    log = rows(out / "metrics.jsonl")
    train_rows = [r for r in log if r["type"] == "train"]
    assert [r["iteration"] for r in train_rows] == list(range(1, ITERS + 1))
    for row in train_rows:
        terms = {k: v for k, v in row.items() if k.startswith("loss_")}
        assert set(terms) == set(CASES[name]["losses"]), row
        assert all(math.isfinite(v) and v >= 0 for v in terms.values()), row
        assert math.isfinite(row["loss"]) and row["loss"] > 0  # medians: not the terms' sum
    val_rows = [r for r in log if r["type"] == "val"]
    assert [r["iteration"] for r in val_rows] == [ITERS]
    assert math.isfinite(val_rows[0]["loss"]["loss"])
    assert (out / "last.pth").stat().st_size > 0
    final = json.loads((out / "final_metrics.json").read_text())
    check_final_layout(name, final)
    for kind, table in final.items():  # the log row holds the same numbers (no per-class)
        assert_close_tree(val_rows[0][kind], {k: v for k, v in table.items() if k != "per_class"})
    primary = final["segm"]["AP"] if name == "balloon" else final["voc07"]["mAP"]
    assert val_rows[0]["primary"] == pytest.approx(primary or 0.0, abs=1e-9)
    with Image.open(out / "predictions.png") as picture:
        assert picture.width >= 2 * 64 and picture.height >= 64  # two val images side by side


def test_eval_prints_the_final_metrics(run):
    """Training validated the full val split: `rcnn eval` on it gives the same numbers."""
    name, out = run
    proc = rcnn_cli(
        "eval", "--checkpoint", str(out / "last.pth"), "--dataset", str(DATA / name),
        "--json", "--device", "cpu", "--num-workers", "0",
    )  # fmt: skip
    printed = json.loads(proc.stdout)
    final = json.loads((out / "final_metrics.json").read_text())
    check_final_layout(name, printed)
    assert_close_tree(printed, final, name)


def test_eval_fast_option_gives_the_same_metrics(run, monkeypatch, capsys):
    """``--fast`` evaluates the optimised model (folded frozen BN, channels-last), whose metrics
    equal the plain model's up to float rounding."""
    import rcnn.models.fast as fast
    from rcnn.cli import main

    name, out = run
    optimized, real_optimize = [], fast.optimize

    def spy(model, **options):
        optimized.append(real_optimize(model, **options))
        return optimized[-1]

    monkeypatch.setattr("rcnn.models.fast.optimize", spy)  # what the command imports at run time
    args = ["eval", "--checkpoint", str(out / "last.pth"), "--dataset", str(DATA / name)]
    assert main([*args, "--json", "--device", "cpu", "--fast"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert len(optimized) == 1  # ResNet-18 with frozen BN: 20 convs fold
    assert sum(isinstance(m, fast.FoldedConv2d) for m in optimized[0].modules()) == 20
    final = json.loads((out / "final_metrics.json").read_text())
    for kind, table in final.items():
        primary = "mAP" if name == "raccoon" else "AP"
        assert printed[kind][primary] == pytest.approx(table[primary], abs=0.01), kind


def test_predict_writes_overlays_and_coco_results(run, tmp_path):
    name, out = run
    images = val_images(name)
    preds = tmp_path / "preds"
    rcnn_cli(
        "predict", *map(str, images), "--checkpoint", str(out / "last.pth"),
        "--output", str(preds), "--threshold", "0.0", "--device", "cpu",
    )  # fmt: skip
    sizes = []
    for path in images:
        with Image.open(path) as source, Image.open(preds / f"{path.stem}.png") as overlay:
            assert overlay.format == "PNG" and overlay.size == source.size
            sizes.append(source.size)
    assert sorted(p.name for p in preds.glob("*.png")) == sorted(f"{p.stem}.png" for p in images)
    listed = json.loads((preds / "images.json").read_text())
    assert [(i["id"], Path(i["file_name"]).name, i["width"], i["height"]) for i in listed] == [
        (k, p.name, *size) for k, (p, size) in enumerate(zip(images, sizes, strict=True))
    ]
    results = json.loads((preds / "results.json").read_text())
    assert results, "a score threshold of 0 keeps the box head's detections"
    # the category ids of the training data travel in the checkpoint: balloon's json names its
    # one category 0, raccoon's VOC classes are numbered label + 1
    category = 0 if name == "balloon" else 1
    assert load_model(out / "last.pth").label_to_category_id == [category]
    for entry in results:
        assert {"image_id", "category_id", "bbox", "score"} <= set(entry)
        assert entry["image_id"] in (0, 1) and entry["category_id"] == category
        width, height = sizes[entry["image_id"]]
        x, y, w, h = entry["bbox"]
        assert min(x, y, w, h) >= 0
        assert x + w <= width + 1e-3 and y + h <= height + 1e-3
        assert 0.0 <= entry["score"] <= 1.0
        if name == "balloon":
            rle = entry["segmentation"]
            assert rle["size"] == [height, width] and isinstance(rle["counts"], str)
        else:
            assert "segmentation" not in entry
    assert {e["image_id"] for e in results} <= {0, 1}


def test_resume_continues_from_the_saved_iteration(run, tmp_path):
    """A finished run, copied elsewhere, resumed to one more iteration: the copy grows."""
    name, out = run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    before = (out / "metrics.jsonl").read_text()
    proc = rcnn_cli("train", "--resume", str(copy), "--max-iters", str(ITERS + 1))
    assert f"run folder: {copy}" in proc.stdout and f"{ITERS + 1} iterations" in proc.stdout
    assert f"resumed at iteration {ITERS}" in proc.stderr
    assert load_checkpoint(copy / "last.pth")["iteration"] == ITERS + 1
    log = (copy / "metrics.jsonl").read_text()
    assert log.startswith(before)  # the earlier rows are kept as they were
    iterations = [(r["type"], r["iteration"]) for r in rows(copy / "metrics.jsonl")]
    train_iters = [i for kind, i in iterations if kind == "train"]
    assert train_iters == list(range(1, ITERS + 2))  # continued, no row repeated
    assert [i for kind, i in iterations if kind == "val"] == [ITERS, ITERS + 1]
    check_final_layout(name, json.loads((copy / "final_metrics.json").read_text()))
    assert (out / "metrics.jsonl").read_text() == before  # the original run is left alone
    assert load_checkpoint(out / "last.pth")["iteration"] == ITERS
