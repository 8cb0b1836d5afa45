"""GluonCV's weights in, GluonCV's detections out.

The expected outputs were made by GluonCV 0.10.5.post0 / MXNet 1.9.1 itself
(``fixtures/make_gluoncv.py``) for every GluonCV network of our zoo, on seeded random weights and
a real image fed at its own size; here the same weights are regenerated from the stored key /
shape list and loaded into our preset of the same name (one network through a ``.params`` file
read back without MXNet: the CLI test). ResNet-101 networks other than
``faster_rcnn_resnet101_v1d_voc`` (the v1d stem's CI check) run with ``RCNN_PEER_FULL=1``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from peer_fixtures import (
    FIXTURES,
    check_fits,
    compare,
    fixture_names,
    load_fixture,
    our_outputs,
    parity_cases,
    read_input,
    read_meta,
    zero_weights,
)

from rcnn.cli import main
from rcnn.convert import gluoncv_model
from rcnn.engine.checkpoint import load_checkpoint, load_model
from rcnn.errors import CheckpointError
from rcnn.weights.gluoncv import convert_params, gluoncv_class_names, load_gluoncv
from rcnn.weights.mxnet_params import parse_params, read_params, write_params
from rcnn.zoo import get_preset, list_models

NETWORKS = fixture_names("gluoncv")
IN_CI = ("faster_rcnn_resnet101_v1d_voc",)  # the v1d stem (every v1d network is a ResNet-101)


def test_every_gluoncv_network_of_the_zoo_has_a_peer_fixture():
    zoo = [n for n in list_models() if n.startswith(("faster_rcnn_", "mask_rcnn_")) and "v1" in n]
    assert sorted(zoo) == NETWORKS and len(NETWORKS) == 12


@pytest.mark.parametrize("name", NETWORKS)
def test_every_key_maps_onto_the_preset(name):
    # GluonCV's own key / shape list of the network: every key converted, every key of ours
    # filled, all shapes equal (a weightless model: no values needed)
    check_fits(get_preset(name).model, load_gluoncv(name, zero_weights(read_meta("gluoncv", name))))


def test_reader_equals_mxnet_on_files_mxnet_wrote():
    arrays = read_params(FIXTURES / "mxnet_small.params")
    expected = json.loads((FIXTURES / "mxnet_small.json").read_text())
    assert sorted(arrays) == sorted(expected)
    for key, value in arrays.items():
        assert list(value.shape) == expected[key]["shape"]
        assert np.array_equal(value.ravel(), np.float32(expected[key]["values"]))
    other = read_params(FIXTURES / "mxnet_dtypes.params")
    assert other["half"].dtype == np.float16 and other["half"].tolist() == [[0.5, -1.25], [2, 3.5]]
    assert other["ints"].tolist() == [1, -2, 3] and other["bytes"].tolist() == [0, 255, 7]


def test_reader_rejects_truncated_and_foreign_files(tmp_path):
    data = (FIXTURES / "mxnet_small.params").read_bytes()
    with pytest.raises(CheckpointError, match=r"truncated MXNet \.params"):
        parse_params(data[:-40], "cut.params")
    with pytest.raises(CheckpointError, match=r"not an MXNet \.params file"):
        parse_params(b"PK\x03\x04" + data, "zip.params")


def test_writer_round_trip(tmp_path):
    arrays = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.int64([5])}
    write_params(tmp_path / "x.params", arrays)
    back = read_params(tmp_path / "x.params")
    assert back.keys() == arrays.keys()
    assert all(
        np.array_equal(back[k], arrays[k]) and back[k].dtype == arrays[k].dtype for k in back
    )


def test_class_names_follow_the_dataset():
    assert gluoncv_class_names("faster_rcnn_resnet50_v1b_voc", 20)[:2] == ("aeroplane", "bicycle")
    assert gluoncv_class_names("mask_rcnn_resnet50_v1b_coco", 80)[0] == "person"
    assert gluoncv_class_names("faster_rcnn_resnet50_v1b_voc", 3) == (
        "class_1",
        "class_2",
        "class_3",
    )


def test_unknown_keys_are_named():
    with pytest.raises(CheckpointError, match=r"does not know.*extra_thing"):
        convert_params(
            {"extra_thing.weight": np.zeros(3, np.float32)}, "faster_rcnn_resnet50_v1b_voc"
        )


@pytest.mark.parametrize("name", parity_cases("gluoncv", lambda n: "101" not in n or n in IN_CI))
def test_detections_equal_gluoncv(name):
    meta, expected, weights = load_fixture("gluoncv", name)
    model = gluoncv_model(name, weights, overrides=meta["overrides"])
    image = read_input(meta["image"])
    ours = our_outputs(model, image)
    assert len(expected["scores"]) >= 20
    assert compare(ours, expected, clip_to=tuple(image.shape[-2:])) == []


def test_convert_cli_writes_a_checkpoint_eval_and_predict_read(tmp_path, capsys):
    name = "mask_rcnn_resnet18_v1b_coco"  # the smallest network: a short write and read
    _, _, weights = load_fixture("gluoncv", name)
    params = tmp_path / "net.params"
    write_params(params, weights)
    out = tmp_path / "net.pth"
    argv = ["convert", "--from", "gluoncv", "--network", name, str(params), "--output", str(out)]
    assert main([*argv, "--set", "rpn.post_nms_topk=[2000,100]"]) == 0
    assert "80 classes" in capsys.readouterr().out
    state = load_checkpoint(out)
    assert state["class_names"][0] == "person"
    assert state["converted_from"]["peer"] == "gluoncv"
    assert state["config"]["model"]["rpn"]["post_nms_topk"] == [2000, 100]
    model = load_model(out)  # what eval / predict --checkpoint and train --weights read
    direct = load_gluoncv(name, params).state_dict
    assert all(torch.equal(value, direct[key]) for key, value in model.state_dict().items())
    # a GluonCV file where a checkpoint is expected: the error says how to convert it
    with pytest.raises(CheckpointError, match="rcnn convert --from gluoncv"):
        load_checkpoint(params)
    assert main(["eval", "--checkpoint", str(params), "--dataset", "shapes"]) == 2
    assert "rcnn convert" in capsys.readouterr().err


def test_detectron2_pkl_as_checkpoint_names_convert(tmp_path):
    path = Path(tmp_path) / "model_final.pkl"
    torch.save({"x": 1}, path, _use_new_zipfile_serialization=False)  # any non-zip pickle
    with pytest.raises(
        CheckpointError, match=r"Detectron2 \.pkl file.*rcnn convert --from detectron2"
    ):
        load_checkpoint(path)
