"""The ``mask_rcnn_shapes`` preset: a valid recipe, the designed model, and it learns shapes."""

from __future__ import annotations

import torch

from rcnn.data import TrainTransform, build_dataset
from rcnn.engine.optim import build_optimizer
from rcnn.engine.train import Schedule
from rcnn.evaluation import build_evaluator
from rcnn.models.build import build_model
from rcnn.models.shapes_preset import MAX_ITERS, NUM_TRAIN, SHAPES_CLASSES, shapes_model
from rcnn.resolve import resolve_config
from rcnn.zoo import get_preset

OVERFIT_STEPS = 250


def test_recipe_resolves_to_a_valid_train_config():
    preset = get_preset("mask_rcnn_shapes")
    cfg = resolve_config("mask_rcnn_shapes")
    assert cfg.model == preset.model and cfg.batch_size == preset.recipe["batch_size"]
    schedule = Schedule.from_config(cfg, NUM_TRAIN, 1)
    assert schedule.max_iters == MAX_ITERS == 800
    assert cfg.dataset_options["num_train"] == NUM_TRAIN
    assert preset.recipe is not get_preset("mask_rcnn_shapes").recipe  # a fresh copy each call


def test_model_is_the_narrow_design():
    model = build_model(shapes_model())
    body = model.backbone.body
    assert body.out_channels == (16, 32, 64, 128)
    assert body.conv1.out_channels == 16 and len(body.layer1) == 1  # resnet10
    assert model.backbone.out_channels == 64
    assert model.class_names == list(SHAPES_CLASSES)
    # 1.5M parameters (the box head's 64*7*7 -> 256 fc is half); ResNet-18 alone has 11M
    num_params = sum(p.numel() for p in model.parameters())
    assert 1.0e6 < num_params < 2.0e6


def test_overfits_a_few_shapes_images(tmp_path):
    """The recipe's model memorises 4 shapes images: the loss falls tenfold, mask AP > 0.9."""
    torch.manual_seed(0)
    cfg = shapes_model()
    options = {"data_root": str(tmp_path / "shapes"), "num_train": 4, "num_val": 1}
    raw = build_dataset("shapes", "train", **options)
    transform = TrainTransform(cfg.input.train_short, cfg.input.max_size, flip_prob=0.0)
    train = build_dataset("shapes", "train", transform=transform, **options)
    images, targets = (list(x) for x in zip(*(train[i] for i in range(4)), strict=True))
    model = build_model(cfg).train()
    optimizer = build_optimizer(model, lr=0.02, momentum=0.9, wd=0.0)
    totals = []
    for _ in range(OVERFIT_STEPS):
        losses = model(images, targets)
        total = sum(v for k, v in losses.items() if k.startswith("loss_"))
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(float(total.detach()))
    assert sum(totals[-5:]) / 5 < 0.1 * totals[0], totals
    model.eval()
    evaluator = build_evaluator(raw)
    with torch.no_grad():
        evaluator.process([r.image_id for r in raw.records], model([raw[i][0] for i in range(4)]))
    metrics = evaluator.evaluate()
    assert metrics["segm"]["AP"] > 0.9 and metrics["bbox"]["AP"] > 0.9, metrics
