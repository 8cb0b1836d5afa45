"""``rcnn train --weights``: a checkpoint (e.g. from ``rcnn convert``) as initial weights, class
rows carried over by name."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from tiny_models import tiny_config

from rcnn.convert import checkpoint_state
from rcnn.engine.checkpoint import save_checkpoint
from rcnn.engine.runner import load_initial_weights
from rcnn.models.build import build_model


def test_initial_weights_keep_shared_classes(tmp_path):
    torch.manual_seed(0)
    donor_cfg = tiny_config(num_classes=2)
    donor_cfg.classes = ("cat", "dog")
    donor = build_model(donor_cfg)
    path = tmp_path / "donor.pth"
    save_checkpoint(path, checkpoint_state(donor, network="tiny", source="x", peer="test"))
    cfg = tiny_config(num_classes=2)
    cfg.classes = ("dog", "bird")
    model = build_model(cfg)
    load_initial_weights(model, str(path))
    key = "backbone.body.layer1.0.conv1.weight"
    assert torch.equal(model.state_dict()[key], donor.state_dict()[key])
    ours = model.roi_heads.box_predictor.cls_score.weight
    theirs = donor.roi_heads.box_predictor.cls_score.weight
    assert torch.equal(ours[0], theirs[0])  # background
    assert torch.equal(ours[1], theirs[2])  # dog
    assert not torch.equal(ours[2], theirs[1])  # bird is new
