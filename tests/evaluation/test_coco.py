"""COCO AP equals pycocotools' own COCOeval on a fixed ground truth and detections file."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math

import numpy as np
import pytest
import torch
from coco_cases import CATEGORIES, make_results, reference_gt
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from rcnn.errors import UserError
from rcnn.evaluation import COCOEvaluator, build_evaluator, primary_metric
from rcnn.evaluation.coco import ALL_STAT_NAMES, STAT_NAMES, evaluate_coco_results, run_cocoeval
from rcnn.evaluation.coco_gt import load_coco_json
from rcnn.evaluation.results import bbox_results, load_results, segm_results
from rcnn.structures import Detections, Record

NAMES = [c["name"] for c in CATEGORIES]
CAT_IDS = [c["id"] for c in CATEGORIES]


def pycocotools_eval(gt: dict, results: list, iou_type: str) -> COCOeval:
    """COCOeval run directly, as its README does (segm results carry no box)."""
    results = copy.deepcopy(results)
    for r in results:
        r.pop("segmentation" if iou_type == "bbox" else "bbox")
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        coco_eval = COCOeval(coco, coco.loadRes(results), iou_type)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval


def reference_per_class(coco_eval: COCOeval) -> dict[str, float]:
    out = {}
    for k, cat_id in enumerate(coco_eval.params.catIds):
        p = coco_eval.eval["precision"][:, :, k, 0, 2]
        name = next(c["name"] for c in CATEGORIES if c["id"] == cat_id)
        out[name] = float(p[p > -1].mean()) if (p > -1).any() else math.nan
    return out


def assert_stat(ours: float, theirs: float) -> None:
    if theirs == -1:
        assert math.isnan(ours)
    else:
        assert ours == pytest.approx(theirs, abs=1e-12)


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_json_ground_truth_gives_pycocotools_numbers(coco_files, iou_type):
    coco_gt = load_coco_json(coco_files["gt"])
    results = load_results(coco_files["results"])
    sizes = {i["id"]: (i["height"], i["width"]) for i in coco_gt.dataset["images"]}
    prepared = bbox_results(results) if iou_type == "bbox" else segm_results(results, sizes)
    stats, per_class = run_cocoeval(coco_gt, prepared, iou_type)
    reference = pycocotools_eval(reference_gt(), make_results(), iou_type)
    assert reference.stats[0] > 0.1  # a meaningful case, neither empty nor perfect
    assert reference.stats[0] < 0.9
    for name, theirs in zip(ALL_STAT_NAMES, reference.stats, strict=True):
        assert_stat(stats[name], theirs)
    expected = reference_per_class(reference)
    assert math.isnan(expected["bird"])  # no instances of category 9
    metrics = evaluate_coco_results(coco_gt, results)
    for name, value in expected.items():
        got = metrics[iou_type]["per_class"][name]
        assert (math.isnan(got) and math.isnan(value)) or got == pytest.approx(value, abs=1e-12)
    assert per_class[3] == pytest.approx(expected["cat"], abs=1e-12)


def test_annotation_id_zero_is_renumbered(coco_files):
    """pycocotools on the raw file (an id 0) gives other numbers; ours match the fixed file."""
    zero_based = reference_gt()
    for ann in zero_based["annotations"]:
        ann["id"] -= 1
    raw = pycocotools_eval(zero_based, make_results(), "bbox")
    fixed = pycocotools_eval(reference_gt(), make_results(), "bbox")
    assert not np.allclose(raw.stats, fixed.stats)
    coco_gt = load_coco_json(coco_files["gt"])
    ids = [a["id"] for a in coco_gt.dataset["annotations"]]
    assert ids == list(range(1, len(ids) + 1))
    areas = [a["area"] for a in coco_gt.dataset["annotations"]]
    assert areas == pytest.approx([a["area"] for a in reference_gt()["annotations"]])


def records_from_reference() -> list[Record]:
    gt = reference_gt()
    records = []
    for image in gt["images"]:
        anns = [a for a in gt["annotations"] if a["image_id"] == image["id"]]
        xywh = np.array([a["bbox"] for a in anns], dtype=np.float32)
        masks = []
        for a in anns:
            seg = a["segmentation"]
            if isinstance(seg, dict):
                masks.append({"size": seg["size"], "counts": seg["counts"].encode()})
            else:
                masks.append([np.array(p, dtype=np.float64) for p in seg])
        records.append(
            Record(
                image_path=image["file_name"],
                image_id=image["id"],
                height=image["height"],
                width=image["width"],
                boxes=np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1),
                labels=np.array([CAT_IDS.index(a["category_id"]) for a in anns], dtype=np.int64),
                ignore=np.array([bool(a["iscrowd"]) for a in anns]),
                masks=masks,
                annotation_ids=[a["id"] for a in anns],
            )
        )
    return records


def detections_by_image(results: list[dict], with_masks: bool = True) -> dict[int, Detections]:
    out = {}
    for image in reference_gt()["images"]:
        rs = sorted((r for r in results if r["image_id"] == image["id"]), key=lambda r: -r["score"])
        xywh = torch.tensor([r["bbox"] for r in rs], dtype=torch.float32).reshape(-1, 4)
        masks = None
        if with_masks:
            decoded = [mask_util.decode(r["segmentation"]) for r in rs]
            masks = torch.from_numpy(np.stack(decoded).astype(bool))
        out[image["id"]] = Detections(
            boxes=torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1),
            scores=torch.tensor([r["score"] for r in rs], dtype=torch.float32),
            labels=torch.tensor([CAT_IDS.index(r["category_id"]) for r in rs]),
            masks=masks,
        )
    return out


def test_evaluator_from_records_gives_pycocotools_numbers():
    evaluator = COCOEvaluator(records_from_reference(), NAMES, CAT_IDS)
    dets = detections_by_image(make_results())
    evaluator.process(list(dets), list(dets.values()))
    metrics = evaluator.evaluate()
    assert set(metrics) == {"bbox", "segm"}
    for iou_type in ("bbox", "segm"):
        reference = pycocotools_eval(reference_gt(), make_results(), iou_type)
        assert set(metrics[iou_type]) == {*STAT_NAMES, "per_class"}
        for name, theirs in zip(STAT_NAMES, reference.stats[:6], strict=True):
            assert_stat(metrics[iou_type][name], theirs)
        assert metrics[iou_type]["per_class"]["dog"] == pytest.approx(
            reference_per_class(reference)["dog"], abs=1e-12
        )
    assert primary_metric(metrics) == metrics["segm"]["AP"]
    assert len(evaluator.results) == len(make_results())
    json.dumps(evaluator.results)  # json-ready


def test_box_only_detections_skip_segm_and_repeat_replaces():
    evaluator = COCOEvaluator(records_from_reference(), NAMES, CAT_IDS)
    dets = detections_by_image(make_results(), with_masks=False)
    evaluator.process(list(dets), list(dets.values()))
    evaluator.process(list(dets), list(dets.values()))  # same images again: replaced
    metrics = evaluator.evaluate()
    assert set(metrics) == {"bbox"}
    reference = pycocotools_eval(reference_gt(), make_results(), "bbox")
    assert metrics["bbox"]["AP"] == pytest.approx(reference.stats[0], abs=1e-12)
    assert primary_metric(metrics) == metrics["bbox"]["AP"]


def test_empty_detections_score_zero():
    evaluator = COCOEvaluator(records_from_reference(), NAMES, CAT_IDS)
    empty = Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64))
    empty.masks = torch.zeros(0, 80, 100, dtype=torch.bool)
    evaluator.process([10], [empty])
    metrics = evaluator.evaluate()
    for iou_type in ("bbox", "segm"):
        assert metrics[iou_type]["AP"] == 0.0
        assert metrics[iou_type]["per_class"]["cat"] == 0.0
    assert math.isnan(metrics["bbox"]["APl"])  # image 10 has no large object
    assert COCOEvaluator(records_from_reference(), NAMES, CAT_IDS).evaluate()["bbox"]["AP"] == 0


def test_unknown_ids_are_named(coco_files):
    coco_gt = load_coco_json(coco_files["gt"])
    results = make_results()
    results[4]["image_id"] = 99
    with pytest.raises(UserError, match=r"image id.*99"):
        evaluate_coco_results(coco_gt, results, source="dets.json")
    results = make_results()
    results[0]["category_id"] = 5
    with pytest.raises(UserError, match=r"category id.*5"):
        evaluate_coco_results(coco_gt, results, source="dets.json")
    with pytest.raises(ValueError, match="image id 99"):
        COCOEvaluator(records_from_reference(), NAMES, CAT_IDS).process(
            [99], [detections_by_image(make_results())[10]]
        )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"annotations": []}', "expected a json list"),
        ('[{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4]}]', "entry 0 lacks score"),
        ('[{"image_id": 1, "category_id": 1, "bbox": [1, 2], "score": 1}]', "bbox must be"),
        ("[1, 2]", "entry 0 is not an object"),
        ("[{", "not valid JSON"),
    ],
)
def test_malformed_results_files(tmp_path, content, message):
    path = tmp_path / "dets.json"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        load_results(path)


def test_missing_and_malformed_annotation_files(tmp_path):
    with pytest.raises(UserError, match=r"nope\.json: annotation file not found"):
        load_coco_json(tmp_path / "nope.json")
    with pytest.raises(UserError, match="results file not found"):
        load_results(tmp_path / "nope.json")
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(UserError, match="no 'categories'"):
        load_coco_json(path)
    gt = reference_gt()
    del gt["images"][1]["height"]
    path.write_text(json.dumps(gt))
    with pytest.raises(UserError, match="image entry lacks a valid id / height / width"):
        load_coco_json(path)
    gt = reference_gt()
    gt["annotations"][2]["image_id"] = 42
    path.write_text(json.dumps(gt))
    with pytest.raises(UserError, match="annotation id 3: unknown image_id 42"):
        load_coco_json(path)


def test_build_evaluator_picks_by_metric():
    class FakeDataset:
        records = records_from_reference()
        class_names = NAMES
        label_to_category_id = CAT_IDS
        metric = "coco"
        has_masks = False

    evaluator = build_evaluator(FakeDataset())
    assert isinstance(evaluator, COCOEvaluator)
    assert evaluator.iou_types == ("bbox",)
    FakeDataset.metric = "voc"
    assert type(build_evaluator(FakeDataset())).__name__ == "VOCEvaluator"
    FakeDataset.metric = "other"
    with pytest.raises(ValueError, match="unknown dataset metric"):
        build_evaluator(FakeDataset())


def test_stated_areas_kept_when_close(tmp_path):
    """COCO's polygon areas (a few % off the pixel count) are kept; wrong ones are replaced."""
    gt = reference_gt()
    mask_areas = [a["area"] for a in gt["annotations"]]
    gt["annotations"][0]["area"] = mask_areas[0] * 1.03  # close: kept
    gt["annotations"][1]["area"] = mask_areas[1] * 0.5  # wrong: the mask's
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))

    class FakeDataset:
        records = records_from_reference()
        class_names = NAMES
        label_to_category_id = CAT_IDS
        metric = "coco"
        has_masks = True
        source = str(path)

    areas = [a["area"] for a in build_evaluator(FakeDataset()).coco_gt.dataset["annotations"]]
    assert areas[0] == pytest.approx(mask_areas[0] * 1.03)
    assert areas[1:] == pytest.approx(mask_areas[1:])
    FakeDataset.source = str(tmp_path / "folder")
    areas = [a["area"] for a in build_evaluator(FakeDataset()).coco_gt.dataset["annotations"]]
    assert areas == pytest.approx(mask_areas)
