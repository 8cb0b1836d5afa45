"""`rcnn eval` on real annotation files: results mode (COCO json, VOC folder) and model mode."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from rcnn.cli import main
from rcnn.structures import Detections

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
FRUITS_JSON = DATA / "fruits_nuts" / "trainval.json"
STATS = ["AP", "AP50", "AP75", "APs", "APm", "APl"]


def fruits_results() -> list[dict]:
    """Jittered boxes for most fruits (every 7th missed, every 5th as the wrong class), the
    ground-truth polygon as RLE for the mask, and a few background detections."""
    gt = json.loads(FRUITS_JSON.read_text())
    sizes = {i["id"]: (i["height"], i["width"]) for i in gt["images"]}
    rng = np.random.default_rng(0)
    results = []
    for k, ann in enumerate(gt["annotations"]):
        if k % 7 == 3:
            continue
        rle = mask_util.merge(mask_util.frPyObjects(ann["segmentation"], *sizes[ann["image_id"]]))
        results.append(
            {
                "image_id": ann["image_id"],
                "category_id": 1 + (ann["category_id"] % 3) if k % 5 == 1 else ann["category_id"],
                "bbox": [float(v) for v in np.array(ann["bbox"]) + rng.uniform(-6, 6, 4)],
                "score": float(rng.uniform(0.1, 1.0)),
                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
            }
        )
    for image_id in list(sizes)[:5]:
        results.append(
            {"image_id": image_id, "category_id": 2, "bbox": [5.0, 5.0, 60.0, 40.0], "score": 0.7}
        )
    return results


def pycocotools_stats(results: list[dict], iou_type: str) -> list[float]:
    results = copy.deepcopy(results)
    if iou_type == "segm":
        results = [r for r in results if "segmentation" in r]
    for r in results:
        r.pop("bbox" if iou_type == "segm" else "segmentation", None)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(FRUITS_JSON))
        coco_eval = COCOeval(coco, coco.loadRes(results), iou_type)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return list(coco_eval.stats[:6])


def run_json(args: list[str], capsys) -> dict:
    assert main(["eval", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_results_file_against_coco_json(tmp_path, capsys):
    results_path = tmp_path / "dets.json"
    results_path.write_text(json.dumps(fruits_results()))
    out = tmp_path / "out"
    metrics = run_json(
        ["--results", str(results_path), "--coco", str(FRUITS_JSON), "--output", str(out)], capsys
    )
    assert set(metrics) == {"bbox", "segm"}
    for iou_type in ("bbox", "segm"):
        reference = pycocotools_stats(fruits_results(), iou_type)
        assert 0.2 < reference[0] < 0.95
        for name, theirs in zip(STATS, reference, strict=True):
            ours = metrics[iou_type][name]
            assert ours is None if theirs == -1 else ours == pytest.approx(theirs, abs=1e-12)
        assert set(metrics[iou_type]["per_class"]) == {"date", "fig", "hazelnut"}
    assert json.loads((out / "final_metrics.json").read_text()) == metrics
    for name in ("per_class.txt", "prf_at_0.5.txt", "pr_curves.png", "confusion_matrix.png"):
        assert (out / name).stat().st_size > 100
    assert main(["eval", "--results", str(results_path), "--coco", str(FRUITS_JSON)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("bbox: AP ")
    assert "precision / recall / F1 at score >= 0.5" in printed


def test_results_file_errors(tmp_path, capsys):
    results = fruits_results()
    results[3]["image_id"] = 404
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(results))
    assert main(["eval", "--results", str(path), "--coco", str(FRUITS_JSON)]) == 2
    assert "image id(s) not in the ground truth: 404" in capsys.readouterr().err
    assert main(["eval", "--results", str(path)]) == 2
    assert "exactly one of --coco" in capsys.readouterr().err
    assert main(["eval", "--results", str(path), "--coco", str(tmp_path / "gone.json")]) == 2
    assert "annotation file not found" in capsys.readouterr().err
    assert main(["eval", "--coco", str(FRUITS_JSON)]) == 2
    assert "give it with --results" in capsys.readouterr().err
    assert main(["eval"]) == 2
    assert "--checkpoint CKPT --dataset SPEC" in capsys.readouterr().err


def test_results_file_against_voc_folder(tmp_path, capsys):
    """Every raccoon found except those of the first image, after one high-scoring false positive:
    precision i/(i+1) at the i-th hit, so VOC12 = M/N * M/(M+1) and VOC07 adds 11-point steps."""
    from rcnn.data import build_dataset

    root = DATA / "raccoon"
    records = build_dataset(str(root), "val").records
    results = [
        {"image_id": Path(r.file_name).stem, "category_id": 1, "score": 0.9,
         "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]}
        for r in records[1:]
        for x1, y1, x2, y2 in r.boxes
    ]  # fmt: skip
    results.append({"image_id": records[1].image_id, "category_id": 1, "score": 0.95,
                    "bbox": [0.0, 0.0, 5.0, 5.0]})  # fmt: skip
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(results))
    metrics = run_json(["--results", str(path), "--voc", str(root), "--split", "val"], capsys)
    total = sum(len(r) for r in records)
    found = total - len(records[0])
    assert 0 < found < total
    top = found / (found + 1)
    assert metrics["voc12"]["mAP"] == pytest.approx(found / total * top)
    steps = sum(t <= found / total + 1e-12 for t in np.linspace(0, 1, 11))
    assert metrics["voc07"]["mAP"] == pytest.approx(steps * top / 11)
    assert metrics["voc07"]["per_class"] == {"raccoon": metrics["voc07"]["mAP"]}


class OracleModel(torch.nn.Module):
    """Returns the ground truth of each image (recognised by its pixels) as detections."""

    def __init__(self, dataset, count: int) -> None:
        super().__init__()
        self.class_names = list(dataset.class_names)
        self.has_mask = True
        self.truth = {}
        for i in range(count):
            image, _ = dataset[i]
            self.truth[hashlib.md5(image.numpy().tobytes()).hexdigest()] = dataset.records[i]

    def forward(self, images):
        return [self._detections(self.truth[hashlib.md5(im.numpy().tobytes()).hexdigest()])
                for im in images]  # fmt: skip

    @staticmethod
    def _detections(record):
        masks = [
            mask_util.decode(mask_util.merge(mask_util.frPyObjects(
                [p.tolist() for p in polygons], record.height, record.width)))
            for polygons in record.masks
        ]  # fmt: skip
        return Detections(
            boxes=torch.from_numpy(record.boxes),
            scores=torch.linspace(1.0, 0.5, len(record)),
            labels=torch.from_numpy(record.labels),
            masks=torch.from_numpy(np.stack(masks).astype(bool)),
        )


def test_model_mode_with_oracle_scores_one(tmp_path, capsys, monkeypatch):
    from rcnn.data import build_dataset

    dataset = build_dataset(str(FRUITS_JSON), "val")
    model = OracleModel(dataset, 3)
    monkeypatch.setattr("rcnn.engine.checkpoint.load_model", lambda path, device="cpu": model)
    out = tmp_path / "out"
    metrics = run_json(
        ["--checkpoint", "ckpt.pt", "--dataset", str(FRUITS_JSON), "--max-images", "3",
         "--batch-size", "2", "--device", "cpu", "--output", str(out)], capsys,
    )  # fmt: skip
    for iou_type in ("bbox", "segm"):
        assert metrics[iou_type]["AP"] == pytest.approx(1.0)
        assert all(v is None or v == pytest.approx(1.0) for v in metrics[iou_type].values()
                   if not isinstance(v, dict))  # fmt: skip
    written = json.loads((out / "results.json").read_text())
    assert {r["image_id"] for r in written} == {r.image_id for r in dataset.records[:3]}
    assert len(written) == sum(len(r) for r in dataset.records[:3])
    assert not math.isnan(json.loads((out / "final_metrics.json").read_text())["bbox"]["AP50"])


class RenamedOracle(OracleModel):
    """The oracle with the classes in another order plus a class the dataset lacks (as a model
    trained elsewhere): its labels are its own numbering, and it also finds "N/A 12" once."""

    def __init__(self, dataset, count: int, classes: list[str]) -> None:
        super().__init__(dataset, count)
        self.dataset_classes, self.class_names = self.class_names, classes

    def forward(self, images):
        out = []
        for dets in super().forward(images):
            own = [self.class_names.index(self.dataset_classes[k]) for k in dets.labels.tolist()]
            labels = torch.tensor([self.class_names.index("N/A 12"), *own])
            out.append(Detections(
                torch.cat([torch.tensor([[0.0, 0.0, 9.0, 9.0]]), dets.boxes]),
                torch.cat([torch.tensor([1.0]), dets.scores]), labels,
                torch.cat([torch.ones_like(dets.masks[:1]), dets.masks]),
            ))  # fmt: skip
        return out


def test_model_classes_matched_to_the_dataset_by_name(tmp_path, capsys, monkeypatch, caplog):
    from rcnn.data import build_dataset

    dataset = build_dataset(str(FRUITS_JSON), "val")
    renamed = ["N/A 12", *reversed(dataset.class_names)]
    model = RenamedOracle(dataset, 3, renamed)
    monkeypatch.setattr("rcnn.engine.checkpoint.load_model", lambda path, device="cpu": model)
    args = ["--checkpoint", "ckpt.pt", "--dataset", str(FRUITS_JSON), "--max-images", "3"]
    with caplog.at_level("INFO"):
        metrics = run_json(args, capsys)
    for iou_type in ("bbox", "segm"):  # label k scored as the dataset's class k would be ~0
        assert metrics[iou_type]["AP"] == pytest.approx(1.0)
    assert "3 detections of classes not in the dataset dropped" in caplog.text
    model.class_names = ["N/A 12", *dataset.class_names[1:]]
    assert main(["eval", *args]) == 2
    err = capsys.readouterr().err
    assert f"does not know 1 of the dataset's classes ({dataset.class_names[0]})" in err


def _torchrun_worker(rank: int, port: int, out: str) -> None:
    """One process of a 2-process `rcnn eval` as torchrun would start it (env://, gloo)."""
    import os

    import torch.distributed as dist

    import rcnn.engine.checkpoint
    from rcnn.data import build_dataset

    os.environ.update(
        {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
         "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "GLOO_SOCKET_IFNAME": "lo"}
    )  # fmt: skip
    from rcnn.cli.eval import _init_distributed
    from rcnn.engine.inference import predict_dataset

    dataset = build_dataset(str(FRUITS_JSON), "all")  # the whole file (val: its hold-out)
    model = OracleModel(dataset, 4)
    assert _init_distributed()
    # predict_dataset alone: rank r predicts images r::2, rank 0 gets all in order, rank 1 [].
    outputs = predict_dataset(model, torch.utils.data.Subset(dataset, range(4)), distributed=True)
    assert [image_id for image_id, _ in outputs] == ([0, 1, 2, 3] if rank == 0 else [])
    rcnn.engine.checkpoint.load_model = lambda path, device="cpu": model
    args = ["eval", "--checkpoint", "c.pt", "--dataset", str(FRUITS_JSON), "--max-images", "4",
            "--split", "all", "--device", "cpu", "--json"]  # fmt: skip
    if rank == 0:
        args += ["--output", out]
    try:
        assert main(args) == 0
    finally:
        dist.destroy_process_group()


def test_distributed_predict_and_eval(tmp_path):
    """A 2-process gloo run: predict_dataset's gather, then `rcnn eval` as under torchrun."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "out"
    mp.spawn(_torchrun_worker, args=(port, str(out)), nprocs=2, join=True)
    written = json.loads((out / "results.json").read_text())
    assert {r["image_id"] for r in written} == {0, 1, 2, 3}  # both shards
    metrics = json.loads((out / "final_metrics.json").read_text())
    assert metrics["bbox"]["AP"] == pytest.approx(1.0)
    assert metrics["segm"]["AP"] == pytest.approx(1.0)


def test_training_validation_on_the_first_val_images():
    """``val_max_images`` (``rcnn train --val-max-images``): only those images are predicted
    (the oracle knows no others) and scored (a perfect AP, not one diluted by unseen images)."""
    from rcnn.data import build_dataset
    from rcnn.engine.distributed import DistContext
    from rcnn.engine.validate import evaluate_detections

    dataset = build_dataset(str(FRUITS_JSON), "all")  # the whole file (val: its hold-out)
    assert len(dataset) > 3
    metrics = evaluate_detections(OracleModel(dataset, 3), dataset, DistContext(), max_images=3)
    assert metrics["bbox"]["AP"] == pytest.approx(1.0)
    assert metrics["segm"]["AP"] == pytest.approx(1.0)
    with pytest.raises(KeyError):  # every image: the fourth is one the oracle never saw
        evaluate_detections(OracleModel(dataset, 3), dataset, DistContext())
