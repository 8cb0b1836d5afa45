"""TrainConfig (rcnn/config.py): --set overrides with type checks, unknown keys, yaml round trip,
intervals."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from rcnn.config import (
    TrainConfig,
    apply_overrides,
    config_diff,
    config_from_dict,
    dump_yaml,
    from_dict,
    interval_iters,
    load_yaml,
    to_dict,
)
from rcnn.errors import UserError


def test_set_overrides_convert_to_the_field_types():
    cfg = TrainConfig()
    apply_overrides(
        cfg,
        [
            "lr=0.02",
            "batch_size=8",
            "lr_decay_epoch=17,23",
            "sync_bn=true",
            "data_root=/data/coco",
            "epochs=3",
            "save_interval=500it",
            "data_root=none",
        ],
    )
    assert cfg.lr == 0.02 and isinstance(cfg.lr, float)
    assert cfg.batch_size == 8 and isinstance(cfg.batch_size, int)
    assert cfg.lr_decay_epoch == [17.0, 23.0]
    assert cfg.sync_bn is True
    assert cfg.epochs == 3.0 and isinstance(cfg.epochs, float)
    assert cfg.save_interval == "500it"
    assert cfg.data_root is None
    apply_overrides(cfg, ["lr_decay_epoch=[8, 11]"])
    assert cfg.lr_decay_epoch == [8.0, 11.0]


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("batch_size=2.5", "config: batch_size expects int, got 2.5"),
        ("lr=abc", "config: lr expects float, got 'abc'"),
        ("sync_bn=maybe", "config: sync_bn expects bool, got 'maybe'"),
        ("lr_decay_epoch=8,x", "config: lr_decay_epoch[1] expects float, got 'x'"),
        ("lr", "--set 'lr': expected key=value"),
    ],
)
def test_set_rejects_wrong_types(item, message):
    with pytest.raises(UserError, match="^" + message.replace("[", r"\[").replace("]", r"\]")):
        apply_overrides(TrainConfig(), [item])


def test_unknown_key_lists_the_valid_ones():
    with pytest.raises(UserError) as info:
        apply_overrides(TrainConfig(), ["lrr=0.1"])
    text = str(info.value)
    assert text.startswith("config: unknown key 'lrr'; valid keys: network, dataset,")
    assert "lr_warmup_factor" in text and "\n" not in text


@dataclass
class _Rpn:
    nms_thresh: float = 0.7
    pre_nms_topk: tuple[int, int] = (2000, 1000)


@dataclass
class _Model:
    name: str = "m"
    rpn: _Rpn = field(default_factory=_Rpn)


def test_nested_overrides_and_unknown_nested_key():
    cfg = TrainConfig(model=_Model())
    apply_overrides(cfg, ["model.rpn.nms_thresh=0.6", "model.rpn.pre_nms_topk=[100,50]"])
    assert cfg.model.rpn.nms_thresh == 0.6
    assert cfg.model.rpn.pre_nms_topk == (100, 50)
    with pytest.raises(UserError, match=r"unknown key 'model.rpn.nms'; valid keys: model.rpn.nms"):
        apply_overrides(cfg, ["model.rpn.nms=0.5"])
    with pytest.raises(UserError, match=r"model.rpn.pre_nms_topk expects 2 values"):
        apply_overrides(cfg, ["model.rpn.pre_nms_topk=[1,2,3]"])
    with pytest.raises(UserError, match="'lr' has no sub-keys"):
        apply_overrides(cfg, ["lr.x=1"])


def test_yaml_round_trip(tmp_path):
    cfg = TrainConfig(lr=0.003, lr_decay_epoch=[2.0, 3.5], gpus="0,1", amp="bf16")
    path = tmp_path / "config.yaml"
    dump_yaml(cfg, path)
    again = config_from_dict(load_yaml(path))
    assert again == cfg
    assert config_diff(to_dict(cfg), to_dict(again)) == []
    nested = from_dict(_Model, {"rpn": {"pre_nms_topk": [3, 4]}})
    assert nested == _Model(rpn=_Rpn(pre_nms_topk=(3, 4)))


def test_config_file_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [1, 2\n")
    with pytest.raises(UserError, match=f"config file {bad}: not valid yaml"):
        load_yaml(bad)
    with pytest.raises(UserError, match="unknown key 'learning_rate'"):
        config_from_dict({"learning_rate": 0.1})


def test_config_diff_names_nested_keys():
    old = to_dict(TrainConfig(model=_Model()))
    new = to_dict(TrainConfig(lr=0.5, model=_Model(rpn=_Rpn(nms_thresh=0.1))))
    assert config_diff(old, new) == ["lr", "model.rpn.nms_thresh"]


def test_intervals_in_epochs_and_iterations():
    assert interval_iters("2", 50) == 100
    assert interval_iters("0.5ep", 50) == 25
    assert interval_iters("500it", 50) == 500
    assert interval_iters("0", 50) == 0
    with pytest.raises(UserError, match="save_interval='soon' is not an interval"):
        interval_iters("soon", 50, "save_interval")
    with pytest.raises(UserError, match=r"config: amp=fp8 must be one of 'off', 'auto'"):
        TrainConfig(amp="fp8").validate()


def test_nested_tuples_from_strings():
    @dataclass
    class _Anchors:
        sizes: tuple[tuple[float, ...], ...] = ((32,),)

    obj = _Anchors()
    cfg = TrainConfig(model=obj)
    apply_overrides(cfg, ["model.sizes=[[16], [32, 48]]"])
    assert obj.sizes == ((16.0,), (32.0, 48.0))
    apply_overrides(cfg, ["model.sizes=((8,),(9,))"])
    assert obj.sizes == ((8.0,), (9.0,))


def test_dataset_options_take_free_form_entries():
    cfg = TrainConfig()
    apply_overrides(cfg, ["dataset_options.num_train=20", "dataset_options={num_val: 4}"])
    assert cfg.dataset_options == {"num_val": 4}
    apply_overrides(cfg, ["dataset_options.image_size=96"])
    assert cfg.dataset_options == {"num_val": 4, "image_size": 96}
