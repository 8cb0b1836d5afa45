"""Loading state dicts: exact key/shape checks with a listed error, torchvision conversion, and
``get_model`` with a local file."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import detection

from rcnn.errors import CheckpointError, UserError
from rcnn.weights import load_state_dict_checked
from rcnn.zoo import COCO_CLASSES, get_model, get_preset, list_models, load_torchvision

TINY = "mask_rcnn_fpn_resnet18_v1b_coco"


@pytest.fixture(scope="module")
def torchvision_state():
    torch.manual_seed(0)
    model = detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=4)
    return model.state_dict()


def test_torchvision_weights_map_one_to_one(torchvision_state):
    model = load_torchvision("fasterrcnn_resnet50_fpn", torchvision_state)
    assert model.class_names == ["class_1", "class_2", "class_3"] and model.num_classes == 3
    ours = model.state_dict()
    torch.testing.assert_close(
        ours["rpn.head.objectness.weight"], torchvision_state["rpn.head.cls_logits.weight"]
    )
    torch.testing.assert_close(
        ours["backbone.fpn.lateral.0.0.weight"],
        torchvision_state["backbone.fpn.inner_blocks.0.0.weight"],
    )
    # background regression rows dropped: our class c is torchvision's class c + 1
    tv_boxes = torchvision_state["roi_heads.box_predictor.bbox_pred.weight"]
    torch.testing.assert_close(ours["roi_heads.box_predictor.bbox_pred.weight"], tv_boxes[4:])


def test_bad_state_dicts_are_listed(torchvision_state):
    state = dict(torchvision_state)
    del state["rpn.head.bbox_pred.bias"]
    state["roi_heads.extra.weight"] = torch.zeros(1)
    state["backbone.fpn.layer_blocks.1.0.weight"] = torch.zeros(256, 256, 1, 1)
    with pytest.raises(CheckpointError) as err:
        load_torchvision("fasterrcnn_resnet50_fpn", state)
    message = str(err.value)
    assert "missing keys (1): rpn.head.deltas.bias" in message
    assert "unexpected keys (1): roi_heads.extra.weight" in message
    assert (
        "backbone.fpn.output.1.0.weight: checkpoint (256, 256, 1, 1) vs model (256, 256, 3, 3)"
        in message
    )
    with pytest.raises(CheckpointError, match="unknown torchvision builder"):
        load_torchvision("retinanet_resnet50_fpn", torchvision_state)


def test_checked_load_of_our_own_state_dict():
    model = get_model(TINY, pretrained_base=False, classes=["a", "b"])
    state = model.state_dict()
    other = get_model(TINY, pretrained_base=False, classes=["a", "b"])
    load_state_dict_checked(other, state)
    for key, value in other.state_dict().items():
        assert torch.equal(value, state[key]), key
    bad = dict(state)
    bad.pop("roi_heads.box_predictor.cls_score.bias")
    with pytest.raises(
        CheckpointError, match=r"missing keys \(1\): roi_heads.box_predictor.cls_score.bias"
    ):
        load_state_dict_checked(other, bad)


def test_get_model_presets_classes_and_local_files(tmp_path):
    import rcnn

    assert rcnn.get_model is get_model and rcnn.list_models is list_models
    names = list_models()
    for name in (
        "fasterrcnn_resnet50_fpn",
        "fasterrcnn_resnet50_fpn_v2",
        "maskrcnn_resnet50_fpn",
        "maskrcnn_resnet50_fpn_v2",
        "faster_rcnn_fpn_resnet50_v1b_coco",
        "mask_rcnn_fpn_resnet18_v1b_coco",
        "mask_rcnn_fpn_resnet50_v1b_coco",
        "mask_rcnn_fpn_resnet101_v1d_coco",
    ):
        assert name in names
    model = get_model(TINY, pretrained_base=False)
    assert model.class_names == list(COCO_CLASSES) and len(COCO_CLASSES) == 80 and model.has_mask
    path = tmp_path / "weights.pth"
    torch.save({"model": model.state_dict()}, path)
    loaded = get_model(TINY, pretrained=str(path), pretrained_base=False)
    assert torch.equal(
        loaded.state_dict()["roi_heads.box_predictor.cls_score.weight"],
        model.state_dict()["roi_heads.box_predictor.cls_score.weight"],
    )
    with pytest.raises(UserError, match="never downloads"):
        get_model(TINY, pretrained="https://example.com/w.pth", pretrained_base=False)
    with pytest.raises(UserError, match="unknown model"):
        get_model("nonexistent_model")


def test_preset_defaults_follow_the_sources():
    tv = get_preset("fasterrcnn_resnet50_fpn")
    assert (
        tv.recipe["lr"] == 0.02
        and tv.recipe["lr_decay_epoch"] == (16, 22)
        and tv.recipe["batch_size"] == 16
    )
    v2 = get_preset("maskrcnn_resnet50_fpn_v2").model
    assert (v2.backbone.norm, v2.fpn.norm, v2.rpn.conv_depth, v2.box_head.kind) == (
        "bn",
        "bn",
        2,
        "4conv1fc",
    )
    assert v2.mask_head.norm == "bn" and v2.mask_on
    gcv = get_preset("mask_rcnn_fpn_resnet50_v1b_coco")
    m = gcv.model
    assert (m.rpn.channels, m.rpn.pre_nms_topk, m.rpn.post_nms_topk) == (
        1024,
        (12000, 6000),
        (2000, 1000),
    )
    assert (m.anchors.style, m.anchors.base_size, m.anchors.scales) == (
        "gluoncv",
        16,
        (2, 4, 8, 16, 32),
    )
    assert (
        m.box_head.pooler_resolution,
        m.box_head.pool_downsample,
        m.box_head.smooth_l1_beta,
    ) == (14, 2, 1.0)
    assert (
        m.box_head.batch_size_per_image,
        m.mask_head.num_conv,
        2 * m.mask_head.pooler_resolution,
    ) == (512, 4, 28)
    assert gcv.recipe["lr_decay_epoch"] == (17, 23) and gcv.recipe[
        "lr_warmup_factor"
    ] == pytest.approx(1 / 3)
    r18 = get_preset("mask_rcnn_fpn_resnet18_v1b_coco").model
    assert (r18.backbone.name, r18.mask_head.num_conv, 2 * r18.mask_head.pooler_resolution) == (
        "resnet18",
        2,
        14,
    )


def published_like_torchvision() -> torch.nn.Module:
    """torchvision's v1 Faster R-CNN as its ``COCO_V1`` weights are used: 91 classes, frozen BN
    with epsilon 0 (``overwrite_eps``). The stem's BN gets a variance (1e-6) that epsilon 1e-5
    would visibly change: the stem's output shrinks about 3x."""
    from torchvision.models.detection._utils import overwrite_eps

    from rcnn.models.layers import freeze_batchnorm

    torch.manual_seed(0)
    model = detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    freeze_batchnorm(model.backbone.body)
    overwrite_eps(model, 0.0)
    stem_bn = model.backbone.body.bn1
    stem_bn.running_var.fill_(1e-6)
    stem_bn.weight.fill_(1e-3)
    return model.eval()


def test_torchvision_published_file_gives_its_outputs_and_names(tmp_path, monkeypatch):
    """torchvision's published COCO_V1 file, recognised by name (here or in the torch hub cache):
    epsilon 0 and torchvision's COCO names, so the features are torchvision's; the same weights
    under another file name get the preset's epsilon 1e-5 and differ."""
    from rcnn.weights import torchvision as tv
    from rcnn.zoo import torchvision_hub_file

    name = "fasterrcnn_resnet50_fpn"
    theirs = published_like_torchvision()
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    with pytest.raises(UserError, match=r"fasterrcnn_resnet50_fpn_coco-258fb6c6\.pth"):
        get_model(name, pretrained=True)  # not in the cache: says where to put which file
    with pytest.raises(UserError, match="only torchvision's builders"):
        get_model(TINY, pretrained=True)
    path = tv.published_file(name)
    assert path == str(hub / "checkpoints" / "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth")
    (hub / "checkpoints").mkdir(parents=True)
    torch.save(theirs.state_dict(), path)
    other = tmp_path / "my_weights.pth"
    torch.save(theirs.state_dict(), other)

    batch = torch.rand(1, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = list(theirs.backbone(batch).values())
    models = {
        "zoo, pretrained=True": get_model(name, pretrained=True, pretrained_base=False),
        "load_torchvision, hub file": load_torchvision(name, torchvision_hub_file(name)),
        "load_torchvision, other name": load_torchvision(name, str(other)),
        "zoo, other name": get_model(name, pretrained=str(other), pretrained_base=False),
        "zoo, eps overridden, other name": get_model(
            name, pretrained=True, pretrained_base=False, overrides={"backbone.norm_eps": 1e-5}
        ),
    }
    for label, model in models.items():
        model.eval()
        assert len(model.class_names) == 90, label
        assert model.class_names[:3] == ["person", "bicycle", "car"], label
        assert model.class_names[11] == "N/A 12" and model.class_names[-1] == "toothbrush", label
        with torch.no_grad():
            ours = list(model.backbone(batch).values())
        worst = max(
            float((o - e).abs().max() / e.abs().max()) for o, e in zip(ours, expected, strict=True)
        )
        if "other name" in label:
            assert model.backbone.body.bn1.eps == 1e-5 and worst > 0.05, label
        else:
            assert model.backbone.body.bn1.eps == 0.0 and worst < 1e-5, label
