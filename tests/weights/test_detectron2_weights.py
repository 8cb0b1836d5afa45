"""Detectron2's weights in, Detectron2's detections out.

The expected outputs were made by Detectron2 (02b5c4e) itself (``fixtures/make_detectron2.py``)
on seeded random weights and a real image fed at its own size (BGR, no resize); here the same
weights are regenerated from the stored key / shape list, pickled as a model-zoo ``.pkl`` and
loaded with the config named by the model-zoo name. R50 FPN and C4, Faster and Mask R-CNN run in
CI; their 1x and 3x configs differ in the schedule only (Detectron2's own configs compared outside
``SOLVER``: ``make_detectron2.py``), so one of each pair is run. The R101 ones run with
``RCNN_PEER_FULL=1``. Mask R-CNN's masks are also compared after pasting into the image.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from peer_fixtures import (
    align_ties,
    check_fits,
    compare_aligned,
    fixture_names,
    load_fixture,
    our_outputs,
    parity_cases,
    pasted_differences,
    read_input,
    read_meta,
    zero_weights,
)

from rcnn.convert import detectron2_model
from rcnn.errors import CheckpointError
from rcnn.ops.masks import paste_masks_aligned
from rcnn.weights.detectron2 import convert_key, load_detectron2, read_detectron2_file
from rcnn.weights.detectron2_config import detectron2_config

CONFIGS = fixture_names("detectron2")


def write_pkl(path, weights: dict) -> None:
    with open(path, "wb") as handle:
        pickle.dump({"model": weights, "__author__": "Detectron2 Model Zoo"}, handle)


def test_fixtures_cover_r50_and_r101_fpn_and_c4_faster_and_mask():
    expected = {
        f"{kind}_rcnn_R_{depth}_{arch}_{schedule}"
        for kind in ("faster", "mask")
        for depth in ("50", "101")
        for arch in ("FPN", "C4")
        for schedule in ("1x", "3x")
    }
    assert set(CONFIGS) <= expected and len(CONFIGS) == 8
    assert {name.rsplit("_", 1)[0] for name in CONFIGS} == {n.rsplit("_", 1)[0] for n in expected}


@pytest.mark.parametrize("name", CONFIGS)
def test_every_key_maps_onto_the_config(name):
    check_fits(
        detectron2_config(name), load_detectron2(zero_weights(read_meta("detectron2", name)), name)
    )


@pytest.mark.parametrize("name", parity_cases("detectron2"))
def test_detections_equal_detectron2(name):
    meta, expected, weights = load_fixture("detectron2", name)
    model = detectron2_model(weights, name, overrides=meta["overrides"])
    ours = our_outputs(model, read_input(meta["image"]))
    assert len(expected["scores"]) >= 20
    ours = align_ties(ours, expected, len(expected["scores"]))
    assert compare_aligned(ours, expected) == []
    if "pasted_probs" in expected:  # pasted into the image as Detectron2 pastes (mask.paste)
        assert model.cfg.mask_head.paste == "aligned"
        # their masks on their boxes: our paste alone, exact
        size = tuple(expected["pasted_probs"].shape[-2:])
        probs, boxes = (torch.from_numpy(expected[k]) for k in ("mask_probs", "boxes"))
        pasted = paste_masks_aligned(probs, boxes[: len(probs)], size).numpy()
        assert pasted_differences(pasted, expected) == 0
        # ours end to end, but for boxes thinner than a pixel (there a box edge 0.001 px off,
        # float rounding, moves the sampled cell by a tenth)
        assert pasted_differences(ours["masks"], expected, min_side=1.0) == 0


def test_zoo_config_differences_reach_the_model_config():
    fpn = detectron2_config("mask_rcnn_R_50_FPN_3x")
    assert (fpn.arch, fpn.mask_on, fpn.input.bgr, fpn.input.pixel_range) == ("fpn", True, True, 255)
    assert fpn.input.pixel_mean == (103.53, 116.28, 123.675) and fpn.input.pixel_std == (1, 1, 1)
    assert fpn.backbone.stride_in_1x1 and fpn.anchors.style == "detectron2"
    assert (fpn.box_head.aligned, fpn.box_head.sampling_ratio) == (True, 0)  # ROIAlignV2
    assert (fpn.box_head.kind, fpn.box_head.pooler_resolution) == ("2fc", 7)
    c4 = detectron2_config("COCO-Detection/faster_rcnn_R_101_C4_3x.yaml")
    assert (c4.arch, c4.mask_on, c4.backbone.name, c4.box_head.kind) == (
        "c4",
        False,
        "resnet101",
        "res5",
    )
    assert c4.anchors.sizes == ((32, 64, 128, 256, 512),) and c4.rpn.pre_nms_topk[1] == 6000


def test_yaml_with_base_is_followed(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "MODEL:\n  MASK_ON: true\n  ROI_HEADS:\n    NAME: Res5ROIHeads\n"
    )
    (tmp_path / "mine.yaml").write_text(
        "_BASE_: base.yaml\nMODEL:\n  ANCHOR_GENERATOR:\n    OFFSET: 0.5\n  ROI_HEADS:\n"
        "    NUM_CLASSES: 3\n    SCORE_THRESH_TEST: 0.3\n"
    )
    cfg = detectron2_config(str(tmp_path / "mine.yaml"))
    assert cfg.mask_on and cfg.arch == "c4" and cfg.anchors.offset == 0.5
    assert cfg.classes == ("class_1", "class_2", "class_3") and cfg.box_head.score_thresh == 0.3
    (tmp_path / "gn.yaml").write_text("MODEL:\n  RESNETS:\n    RES5_DILATION: 2\n")
    with pytest.raises(CheckpointError, match="RES5_DILATION=2 has no equivalent"):
        detectron2_config(str(tmp_path / "gn.yaml"))


def test_background_row_moves_to_the_front_and_keys_map():
    assert convert_key("backbone.bottom_up.res3.1.conv2.norm.running_var") == (
        "backbone.body.layer2.1.bn2.running_var"
    )
    assert convert_key("backbone.fpn_output4.bias") == "backbone.fpn.output.2.0.bias"
    assert (
        convert_key("roi_heads.mask_head.mask_fcn1.weight")
        == "roi_heads.mask_head.convs.0.0.weight"
    )
    assert (
        convert_key("roi_heads.res5.2.shortcut.norm.weight")
        == "roi_heads.res5.2.downsample.1.weight"
    )
    name = "mask_rcnn_R_50_FPN_3x"  # its weights are cached from its parity test
    _, _, weights = load_fixture("detectron2", name)
    out = load_detectron2(weights, name)
    theirs = weights["roi_heads.box_predictor.cls_score.weight"]
    ours = out.state_dict["roi_heads.box_predictor.cls_score.weight"].numpy()
    assert np.array_equal(ours[0], theirs[-1]) and np.array_equal(ours[1:], theirs[:-1])
    assert out.classes[0] == "person" and len(out.classes) == 80


def test_pkl_reader_runs_no_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pkl"
    with open(path, "wb") as handle:
        pickle.dump({"model": {"x": Evil()}}, handle)
    with pytest.raises(CheckpointError, match=r"builtins\.print is not allowed"):
        read_detectron2_file(path)


def test_pkl_and_pth_files_are_read(tmp_path):
    key = "proposal_generator.rpn_head.conv.weight"
    path = tmp_path / "model_final.pth"
    torch.save({"model": {key: torch.ones(2)}}, path)
    assert list(read_detectron2_file(path)) == [key]
    write_pkl(tmp_path / "model_final.pkl", {key: np.arange(3, dtype=np.float32)})
    assert read_detectron2_file(tmp_path / "model_final.pkl")[key].tolist() == [0, 1, 2]
