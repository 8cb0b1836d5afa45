"""bf16 vs float32 COCO AP of a small trained model: the shapes demo's model (the main job,
800 steps, weights rounded to float16 by ``data/make_shapes_fixture.py``).

The issue's bar: bf16 autocast within 0.005 box and mask AP of float32. Measured on AMD Zen 3
(emulated bf16, 2026-12-01) on the 300 held-out images scored here: box 0.7986 -> 0.7960 (-0.0026),
mask 0.7609 -> 0.7593 (-0.0016), with the heads' last layers in float32
(``rcnn.models.layers.float32_layer``). Emulated bf16 rounds as native bf16 does (bf16 operands,
float32 accumulation), so the bar is asserted on every processor; 300 images of 128 px take about
40 s on 2 idle Zen 3 cores (bf16 emulated), less where it is native."""

from __future__ import annotations

import copy
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

FIXTURE = Path(__file__).resolve().parent / "data" / "shapes_model_fp16.pt"
NUM_IMAGES = 300
BAR = 0.005  # the issue's


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


def test_bf16_ap_close_to_float32(tmp_path, torch_threads):
    # the main job's held-out images (seed 0's val split does not depend on num_train)
    dataset = build_dataset(
        "shapes", "val", data_root=str(tmp_path), seed=0, num_train=1, num_val=NUM_IMAGES,
        image_size=128,
    )  # fmt: skip
    assert len(dataset) == NUM_IMAGES
    torch_threads(2)
    model = trained_model()
    box, mask = coco_ap(model, dataset)
    assert box > 0.75 and mask > 0.7, (box, mask)  # a trained model, not noise
    box16, mask16 = coco_ap(optimize(copy.deepcopy(model), amp="bf16"), dataset)
    assert box16 == pytest.approx(box, abs=BAR), (box, box16)
    assert mask16 == pytest.approx(mask, abs=BAR), (mask, mask16)
