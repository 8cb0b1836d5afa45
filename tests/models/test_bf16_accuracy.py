"""bf16 vs float32 COCO AP of a small trained model (the shapes demo trained 300 steps,
``data/make_shapes_fixture.py``; box / mask AP 0.48 / 0.45 on the 100 held-out images).

The issue's goal is 0.005 on a fully trained model over 100 images. This under-trained fixture
has many near-tied proposals, and bf16 moves its AP by more: measured on AMD Zen 3 (emulated
bf16, 2026-12-01) +0.034 box / +0.025 mask on these 24 images, +0.009 / +0.007 on all 100. So
the test bounds the change at 0.05 on 24 images: bf16 inference that breaks a stage (boxes,
scores or masks in the wrong dtype or scale) fails it; the 0.005 goal is measured by hand.

Scores 24 images of 128 px. Where bf16 is emulated (AVX2 processors such as AMD Zen 3: torch's
reference convolution: 5-9 s per image on that machine under heavy load) it is skipped unless
``RCNN_BF16_ACCURACY=1``; the 100-image figures measured by hand on that machine are in
README.md (Speed)."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch

from rcnn.config import from_dict
from rcnn.data import build_dataset
from rcnn.engine.inference import predict_dataset
from rcnn.evaluation import build_evaluator
from rcnn.models.build import build_model
from rcnn.models.config import ModelConfig
from rcnn.models.fast import optimize
from rcnn.ops.precision import cpu_has_bf16

FIXTURE = Path(__file__).resolve().parent / "data" / "shapes_model_fp16.pt"
NUM_IMAGES = 24


def trained_model() -> torch.nn.Module:
    saved = torch.load(FIXTURE, weights_only=True)
    model = build_model(from_dict(ModelConfig, saved["model_config"]))
    state = {k: v.float() if v.is_floating_point() else v for k, v in saved["state"].items()}
    model.load_state_dict(state)
    return model.eval()


def coco_ap(model: torch.nn.Module, dataset) -> tuple[float, float]:
    evaluator = build_evaluator(dataset)
    evaluator.reset()
    predict_dataset(model, dataset, evaluator=evaluator)
    metrics = evaluator.evaluate()
    return metrics["bbox"]["AP"], metrics["segm"]["AP"]


@pytest.mark.skipif(
    not (cpu_has_bf16() or os.environ.get("RCNN_BF16_ACCURACY") == "1"),
    reason="bf16 is emulated on this processor (no AMX / AVX512-BF16): ~3 minutes for 24 images; "
    "RCNN_BF16_ACCURACY=1 runs it anyway",
)
def test_bf16_ap_close_to_float32(tmp_path, torch_threads):
    # the main job's held-out images (seed 0's val split does not depend on num_train)
    dataset = build_dataset(
        "shapes", "val", data_root=str(tmp_path), seed=0, num_train=1, num_val=NUM_IMAGES,
        image_size=128,
    )  # fmt: skip
    torch_threads(2)
    model = trained_model()
    box, mask = coco_ap(model, dataset)
    assert box > 0.4 and mask > 0.4, (box, mask)  # a trained model, not noise
    box16, mask16 = coco_ap(optimize(copy.deepcopy(model), amp="bf16"), dataset)
    assert box16 == pytest.approx(box, abs=0.05), (box, box16)
    assert mask16 == pytest.approx(mask, abs=0.05), (mask, mask16)
