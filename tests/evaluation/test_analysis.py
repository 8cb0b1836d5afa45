"""Precision/recall/F1 at a threshold, confusion matrix and plots on the hand-checked VOC case."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image
from voc_cases import CLASSES, detections, records

from rcnn.evaluation.analysis import (
    confusion_matrix,
    format_table,
    save_confusion_matrix,
    save_pr_curves,
    threshold_metrics,
)
from rcnn.evaluation.report import write_analysis
from rcnn.evaluation.voc import detections_to_arrays, match_class


def arrays():
    return {image_id: detections_to_arrays(d) for image_id, d in detections().items()}


def test_threshold_metrics_by_hand():
    matches = [match_class(records(), arrays(), c) for c in range(3)]
    rows = {row["class"]: row for row in threshold_metrics(matches, CLASSES, 0.55)}
    # "a" above 0.55: 0.9 TP, 0.8 FP, 0.7 TP (0.6 on the difficult box is not counted).
    assert (rows["a"]["tp"], rows["a"]["fp"], rows["a"]["fn"], rows["a"]["gt"]) == (2, 1, 1, 3)
    assert rows["a"]["precision"] == pytest.approx(2 / 3)
    assert rows["a"]["recall"] == pytest.approx(2 / 3)
    assert rows["a"]["f1"] == pytest.approx(2 / 3)
    assert (rows["b"]["tp"], rows["b"]["fp"], rows["b"]["f1"]) == (0, 1, 0.0)
    assert rows["c"]["fp"] == 1
    assert math.isnan(rows["c"]["recall"])
    low = {row["class"]: row for row in threshold_metrics(matches, CLASSES, 0.0)}
    assert (low["a"]["tp"], low["a"]["fp"]) == (3, 2)
    assert low["a"]["f1"] == pytest.approx(2 * 0.6 * 1.0 / 1.6)


def test_confusion_matrix_by_hand():
    matrix = confusion_matrix(records(), arrays(), 3, score_thresh=0.55)
    expected = np.array(
        [
            [1, 1, 0, 1],  # a: found once, once taken by the "b" detection, once missed
            [0, 0, 0, 1],  # b: missed (its detection is at 0.3)
            [0, 0, 0, 0],
            [2, 0, 1, 0],  # background: 0.8 "a", 0.7 "a" on a taken box, the "c" detection
        ]
    )
    np.testing.assert_array_equal(matrix, expected)
    everything = confusion_matrix(records(), arrays(), 3, score_thresh=0.0)
    assert everything[1, 1] == 1  # the 0.3 "b" detection finds its box
    assert everything[:3, :].sum() == 4  # each of the 4 non-difficult boxes counted once


def test_plots_and_tables(tmp_path):
    matches = [match_class(records(), arrays(), c) for c in range(3)]
    save_pr_curves(matches, CLASSES, tmp_path / "pr.png")
    save_confusion_matrix(np.eye(4, dtype=np.int64), CLASSES, tmp_path / "cm.png")
    for name in ("pr.png", "cm.png"):
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG"
            assert min(image.size) >= 300
    table = format_table(threshold_metrics(matches, CLASSES, 0.5)).splitlines()
    assert table[0].split() == ["class", "gt", "tp", "fp", "fn", "precision", "recall", "f1"]
    assert len(table) == 2 + len(CLASSES)
    assert table[4].split()[-1] == "nan"
    text = write_analysis(records(), arrays(), CLASSES, score_thresh=0.55, output_dir=tmp_path)
    assert text.splitlines()[2].split()[:5] == ["a", "3", "2", "1", "1"]
    written = sorted(p.name for p in tmp_path.iterdir())
    assert {"pr_curves.png", "confusion_matrix.png", "prf_at_0.55.json"} <= set(written)
