"""Fixtures of the evaluation tests (the cases themselves are in ``coco_cases.py``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from coco_cases import make_results, quirky_gt


@pytest.fixture
def coco_files(tmp_path: Path) -> dict[str, Path]:
    """``quirky_gt`` and ``make_results`` written as json files."""
    gt_path = tmp_path / "gt.json"
    results_path = tmp_path / "results.json"
    gt_path.write_text(json.dumps(quirky_gt()))
    results_path.write_text(json.dumps(make_results()))
    return {"gt": gt_path, "results": results_path}
