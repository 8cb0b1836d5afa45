"""``reset_class`` (GluonCV's transfer-learning helper): rows of reused classes and the background
are copied exactly, the others are new; ``get_model(classes=...)`` with a weight file uses it."""

from __future__ import annotations

import pytest
import torch

from rcnn.errors import UserError
from rcnn.models.build import build_model
from rcnn.models.config import ModelConfig
from rcnn.zoo import COCO_CLASSES, get_model


def tiny_model(classes=("a", "b", "c")):
    cfg = ModelConfig(classes=tuple(classes), mask_on=True)
    cfg.backbone.name, cfg.backbone.pretrained_base = "resnet18", False
    cfg.fpn.out_channels, cfg.box_head.fc_dim = 16, 32
    cfg.mask_head.conv_dim, cfg.mask_head.num_conv = 16, 1
    torch.manual_seed(0)
    return build_model(cfg)


def heads(model):
    """(classifier weight, classifier bias, box weight, box bias, mask weight, mask bias) copies."""
    box = model.roi_heads.box_predictor
    tensors = (box.cls_score.weight, box.cls_score.bias, box.bbox_pred.weight, box.bbox_pred.bias)
    if model.roi_heads.mask_head is None:
        return [t.detach().clone() for t in tensors] + [None, None]
    mask = model.roi_heads.mask_head.predictor
    return [t.detach().clone() for t in (*tensors, mask.weight, mask.bias)]


def assert_class_copied(new, old, new_idx: int, old_idx: int) -> None:
    cls_w, cls_b, box_w, box_b, mask_w, mask_b = new
    o_cls_w, o_cls_b, o_box_w, o_box_b, o_mask_w, o_mask_b = old
    assert torch.equal(cls_w[new_idx + 1], o_cls_w[old_idx + 1])
    assert torch.equal(cls_b[new_idx + 1], o_cls_b[old_idx + 1])
    rows, old_rows = slice(4 * new_idx, 4 * new_idx + 4), slice(4 * old_idx, 4 * old_idx + 4)
    assert torch.equal(box_w[rows], o_box_w[old_rows])
    assert torch.equal(box_b[rows], o_box_b[old_rows])
    if mask_w is not None:
        assert torch.equal(mask_w[new_idx], o_mask_w[old_idx])
        assert torch.equal(mask_b[new_idx], o_mask_b[old_idx])


def test_reuse_by_names_copies_rows_and_background():
    model = tiny_model()
    with torch.no_grad():  # non-zero biases so that copying them is visible
        for bias in (
            model.roi_heads.box_predictor.cls_score.bias,
            model.roi_heads.box_predictor.bbox_pred.bias,
            model.roi_heads.mask_head.predictor.bias,
        ):
            bias.copy_(torch.randn_like(bias))
    old = heads(model)
    model.reset_class(["c", "x", "a"], reuse_weights=["c", "a"])
    new = heads(model)
    assert model.class_names == ["c", "x", "a"] and model.num_classes == 3
    assert model.cfg.classes == ("c", "x", "a")
    assert new[0].shape == (4, 32) and new[2].shape == (12, 32) and new[4].shape[0] == 3
    assert torch.equal(new[0][0], old[0][0]) and torch.equal(new[1][0], old[1][0])
    assert_class_copied(new, old, 0, 2)
    assert_class_copied(new, old, 2, 0)
    # "x" is freshly initialised: none of its rows equals an old row
    assert not any(torch.equal(new[0][2], old[0][k]) for k in range(4))
    assert new[1][2] == 0 and bool((new[5][1] == 0).all())
    model.eval()
    (det,) = model([torch.randint(0, 256, (3, 48, 64), dtype=torch.uint8)])
    assert bool((det.labels < 3).all())


def test_reuse_by_dict_of_names_and_indices():
    model = tiny_model()
    old = heads(model)
    model.reset_class(["p", "q"], reuse_weights={"p": "b", 1: 2})
    new = heads(model)
    assert_class_copied(new, old, 0, 1)
    assert_class_copied(new, old, 1, 2)


def test_nothing_reused_keeps_only_background():
    model = tiny_model()
    old = heads(model)
    model.reset_class(["a", "b", "c"])
    new = heads(model)
    assert torch.equal(new[0][0], old[0][0])
    assert not torch.equal(new[0][1], old[0][1])


@pytest.mark.parametrize("reuse", [["zebra"], {"x": "zebra"}, {"x": 3}, {"nope": "a"}, "a"])
def test_bad_reuse_weights_raise(reuse):
    model = tiny_model()
    with pytest.raises(UserError):
        model.reset_class(["x", "a"], reuse_weights=reuse)


def test_get_model_with_weights_keeps_classes_whose_names_carry_over(tmp_path):
    name = "mask_rcnn_resnet18_v1b_coco"  # a C4 model
    torch.manual_seed(0)
    source = get_model(name, pretrained_base=False)
    path = tmp_path / "coco.pth"
    torch.save(source.state_dict(), path)
    old = heads(source)
    model = get_model(name, pretrained=path, classes=["dog", "unicorn", "person"])
    assert model.class_names == ["dog", "unicorn", "person"]
    new = heads(model)
    assert_class_copied(new, old, 0, COCO_CLASSES.index("dog"))
    assert_class_copied(new, old, 2, COCO_CLASSES.index("person"))
    assert torch.equal(new[0][0], old[0][0])
    body = "backbone.body.layer3.0.conv1.weight"
    assert torch.equal(model.state_dict()[body], source.state_dict()[body])


def test_get_model_reads_class_names_of_our_checkpoints(tmp_path):
    name = "faster_rcnn_resnet50_v1b_voc"
    torch.manual_seed(0)
    source = get_model(name, pretrained_base=False, classes=["cat", "dog"])
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": source.state_dict(), "class_names": ["cat", "dog"]}, path)
    same = get_model(name, pretrained=path)
    assert same.class_names == ["cat", "dog"]
    assert all(torch.equal(v, same.state_dict()[k]) for k, v in source.state_dict().items())
    moved = get_model(name, pretrained=path, classes=["dog", "bird"])
    assert_class_copied(heads(moved), heads(source), 0, 1)
