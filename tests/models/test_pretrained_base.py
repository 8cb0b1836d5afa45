"""``pretrained_base``: ImageNet body weights from a local file, the env var or the torch hub
cache; never downloaded; a missing file warns (or raises when asked for explicitly)."""

from __future__ import annotations

import logging
import os
import re

import pytest
import torch
import torchvision

from rcnn.errors import CheckpointError
from rcnn.models.build import build_model
from rcnn.models.config import ModelConfig
from rcnn.models.pretrained import ENV_VAR, hub_cache_path, imagenet_url, load_pretrained_base


@pytest.fixture(scope="module")
def imagenet_file(tmp_path_factory):
    """A torchvision ResNet-18 state dict (seeded random weights, non-trivial BN statistics)."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
                module.bias.uniform_(-1, 1)
    path = tmp_path_factory.mktemp("imagenet") / "resnet18-f37072fd.pth"
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)


def config(arch="fpn", weights="") -> ModelConfig:
    cfg = ModelConfig(arch=arch, classes=("a",))
    cfg.backbone.name, cfg.backbone.weights = "resnet18", weights
    cfg.fpn.out_channels, cfg.box_head.fc_dim = 16, 32
    if arch == "c4":
        cfg.anchors.style, cfg.box_head.kind, cfg.rpn.channels = "gluoncv", "res5", 32
    return cfg


def assert_body_equals(model, reference: dict, arch: str) -> None:
    """Every body (and res5) tensor of ``model`` equals the file's, and none is left out."""
    own = model.state_dict()
    mapped = set()
    for key, value in reference.items():
        if key.startswith("fc.") or key.endswith("num_batches_tracked"):
            continue
        if arch == "c4" and key.startswith("layer4."):
            ours = "roi_heads.res5." + key[len("layer4.") :]
        else:
            ours = "backbone.body." + key
        assert torch.equal(own[ours], value), key
        mapped.add(ours)
    assert mapped == {k for k in own if k.startswith(("backbone.body.", "roi_heads.res5."))}


def test_explicit_file_loads_every_body_weight(imagenet_file):
    model = build_model(config(weights=str(imagenet_file)))
    assert_body_equals(model, torch.load(imagenet_file), "fpn")


def test_env_var_loads_c4_body_and_res5(imagenet_file, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(imagenet_file))
    model = build_model(config("c4"))
    assert_body_equals(model, torch.load(imagenet_file), "c4")


def test_torch_hub_cache_file_is_found(imagenet_file, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    path = hub_cache_path("resnet18")
    assert path == os.path.join(str(tmp_path), "checkpoints", "resnet18-f37072fd.pth")
    os.makedirs(os.path.dirname(path))
    os.symlink(imagenet_file, path)
    model = build_model(config())
    assert_body_equals(model, torch.load(imagenet_file), "fpn")


def test_absent_file_warns_and_keeps_random_init(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="rcnn.models.pretrained"):
        model = build_model(config())
    assert hub_cache_path("resnet18") in caplog.text
    assert imagenet_url("resnet18") in caplog.text
    assert imagenet_url("resnet18").startswith("https://download.pytorch.org/models/")
    assert model.state_dict()["backbone.body.conv1.weight"].abs().sum() > 0


def test_explicit_missing_file_raises(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="not found"):
        build_model(config(weights=str(tmp_path / "nope.pth")))
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "nope.pth"))
    with pytest.raises(CheckpointError, match=ENV_VAR):
        build_model(config())


def test_missing_or_unexpected_keys_raise(imagenet_file, tmp_path):
    state = torch.load(imagenet_file)
    missing = dict(state)
    del missing["layer2.0.conv1.weight"]
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=re.escape("layer2.0.conv1.weight")):
        build_model(config(weights=str(tmp_path / "missing.pth")))
    extra = dict(state, **{"layer5.weight": torch.zeros(1)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=re.escape("layer5.weight")):
        build_model(config(weights=str(tmp_path / "extra.pth")))


def test_off_does_not_look_for_weights(tmp_path):
    cfg = config(weights=str(tmp_path / "nope.pth"))
    cfg.backbone.pretrained_base = False
    model = build_model(cfg)  # the missing file is not an error: it is not looked for
    assert load_pretrained_base(model.backbone.body, cfg) is None
    cfg.backbone.pretrained_base = True
    with pytest.raises(CheckpointError, match=r"nope\.pth: backbone weight file .* not found"):
        build_model(cfg)


def test_narrow_body_warns_instead_of_looking_up_weights(tmp_path, monkeypatch, caplog):
    """torchvision has no resnet10 / width-16 weights: a warning, random init, no exception."""
    from rcnn.zoo import get_preset

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.delenv(ENV_VAR, raising=False)
    cfg = get_preset("mask_rcnn_shapes").model
    cfg.backbone.pretrained_base = True
    with caplog.at_level(logging.WARNING, logger="rcnn.models.pretrained"):
        build_model(cfg)
    assert "no ImageNet weights for resnet10 (stem torchvision, width 16)" in caplog.text
