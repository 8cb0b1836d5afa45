"""``rcnn.resolve.resolve_config``: preset -> file -> overrides (or checkpoint -> overrides)."""

from __future__ import annotations

import pytest

from rcnn.config import to_dict
from rcnn.errors import UserError
from rcnn.resolve import resolve_config
from rcnn.zoo import get_preset

SHAPES = "mask_rcnn_shapes"  # recipe: batch 8, lr 0.02, dataset_options num_train 2000 ...


def test_preset_then_file_then_overrides_in_order():
    file = {"lr": 0.5, "batch_size": 4, "model": {"rpn": {"nms_thresh": 0.65}}}
    cfg = resolve_config(SHAPES, file=file, overrides=["lr=0.25", "model.rpn.nms_thresh=0.6"])
    assert (cfg.lr, cfg.batch_size) == (0.25, 4)  # the override wins; lr given: not scaled
    assert cfg.model.rpn.nms_thresh == 0.6
    assert cfg.model.backbone.name == get_preset(SHAPES).model.backbone.name == "resnet10"
    later = resolve_config(SHAPES, overrides=["lr=0.1", "lr=0.3"])
    assert later.lr == 0.3  # items apply in order


def test_mapping_overrides_are_typed_and_merge_free_form_options():
    cfg = resolve_config(overrides={"network": SHAPES, "dataset_options.num_train": 20, "seed": 7})
    # the recipe's other options stay: 2000 -> 20 train images, 100 val, 128 px
    assert cfg.dataset_options == {"num_train": 20, "num_val": 100, "image_size": 128}
    assert cfg.seed == 7
    text = resolve_config(SHAPES, overrides=["dataset_options.num_val=5"])
    assert text.dataset_options["num_val"] == 5  # command-line text parsed as yaml
    with pytest.raises(UserError, match=r"config: batch_size expects int, got 2\.5"):
        resolve_config(SHAPES, overrides={"batch_size": 2.5})
    with pytest.raises(UserError, match="expected a list of key=value items"):
        resolve_config(SHAPES, overrides="lr=0.1")


def test_linear_lr_scaling_when_only_the_batch_size_changes():
    assert resolve_config(SHAPES, overrides=["batch_size=4"]).lr == pytest.approx(0.01)
    assert resolve_config(SHAPES, overrides=["batch_size=16"]).lr == pytest.approx(0.04)
    assert resolve_config(SHAPES, file={"batch_size": 4, "lr": 0.5}).lr == 0.5


def test_network_comes_from_overrides_then_file_then_argument():
    name = "mask_rcnn_fpn_resnet18_v1b_coco"
    assert resolve_config(file={"network": name}).model.backbone.name == "resnet18"
    over = resolve_config(SHAPES, file={"network": name}, overrides=[f"network={SHAPES}"])
    assert over.network == SHAPES and over.model.backbone.width == 16
    with pytest.raises(UserError, match="unknown model 'nope'"):
        resolve_config("nope")


def test_checkpoint_is_the_base_when_resuming(tmp_path):
    saved = to_dict(resolve_config(SHAPES, overrides=["lr=0.05", "max_iters=10"]))
    ckpt = tmp_path / "run" / "last.pth"
    cfg = resolve_config(
        checkpoint={"config": saved}, file={"network": "ignored"}, overrides=["max_iters=20"],
        resume=ckpt,
    )  # fmt: skip
    assert (cfg.lr, cfg.max_iters) == (0.05, 20)  # not the recipe's lr: the checkpoint's
    assert cfg.resume == str(ckpt) and cfg.output == str(ckpt.parent)
    with pytest.raises(UserError, match=r"differs from the checkpoint's: lr \(0.05 -> 0.1\)"):
        resolve_config(checkpoint={"config": saved}, overrides=["lr=0.1"], resume=ckpt)
