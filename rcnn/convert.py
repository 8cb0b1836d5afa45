"""Our models (and checkpoints) from peers' weight files: GluonCV, Detectron2, torchvision.

``rcnn.weights`` maps a peer's keys and settings (``PeerWeights``); this module builds the model on
the matching preset or config and writes it as a checkpoint in the format of a training run, which
``rcnn eval``, ``rcnn predict`` and ``rcnn train --weights`` read (``rcnn convert``).
"""

from __future__ import annotations

import os
from typing import Any

from rcnn.config import TrainConfig, apply_dict, nest_dotted, to_dict
from rcnn.errors import UserError
from rcnn.models.build import build_model
from rcnn.models.config import ModelConfig
from rcnn.models.rcnn import RCNN
from rcnn.weights import load_state_dict_checked
from rcnn.weights.detectron2 import load_detectron2
from rcnn.weights.gluoncv import load_gluoncv
from rcnn.weights.peer import PeerWeights
from rcnn.zoo import get_preset, list_models, load_torchvision

PEERS = ("gluoncv", "detectron2", "torchvision")


def _build(weights: PeerWeights, cfg: ModelConfig, overrides: dict[str, Any] | None) -> RCNN:
    if overrides:
        apply_dict(cfg, nest_dotted(overrides), prefix="model.")
    cfg.classes = tuple(weights.classes)
    cfg.backbone.pretrained_base = False
    model = build_model(cfg)
    load_state_dict_checked(model, weights.state_dict, source=weights.source)
    return model.eval()


def gluoncv_model(name: str, path, *, classes=None, overrides=None) -> RCNN:
    """Our model of GluonCV zoo network ``name`` (a preset of ours) with the ``.params`` weights
    (``path``: the file, or its ``{key: array}``)."""
    if name not in list_models() or not name.startswith(("faster_rcnn", "mask_rcnn_")):
        gluoncv_names = [n for n in list_models() if n.startswith(("faster_rcnn", "mask_rcnn_"))]
        raise UserError(f"{name!r} is not a GluonCV network of the zoo; one of {gluoncv_names}")
    weights = load_gluoncv(name, path, classes=classes)
    return _build(weights, get_preset(name).model, overrides)


def detectron2_model(path, config, *, classes=None, overrides=None) -> RCNN:
    """Our model of a Detectron2 ``.pkl`` / ``.pth`` (``path``: the file, or its ``model`` dict)
    with its config (yaml file or zoo name)."""
    weights = load_detectron2(path, config, classes=classes)
    return _build(weights, weights.model, overrides)


def peer_model(peer: str, path, *, network: str, classes=None, overrides=None) -> RCNN:
    """The model of ``path`` written by ``peer`` (one of ``PEERS``); ``network`` is the GluonCV
    zoo name, the Detectron2 config (yaml or zoo name) or the torchvision builder."""
    if peer == "gluoncv":
        return gluoncv_model(network, path, classes=classes, overrides=overrides)
    if peer == "detectron2":
        return detectron2_model(path, network, classes=classes, overrides=overrides)
    if peer == "torchvision":
        if overrides:
            raise UserError("--set is not available with --from torchvision")
        return load_torchvision(network, os.fspath(path), classes=classes).eval()
    raise UserError(f"unknown peer {peer!r}; expected one of {PEERS}")


def checkpoint_state(model: RCNN, *, network: str, source: str, peer: str) -> dict:
    """A checkpoint dict like a training run's (``rcnn.engine.checkpoint``): weights, the
    resolved config (model config included), class names; no optimizer state."""
    config = TrainConfig(network=network, model=model.cfg)
    return {
        "model": model.state_dict(),
        "config": to_dict(config),
        "class_names": list(model.class_names),
        "iteration": 0,
        "epoch": 0,
        "converted_from": {"peer": peer, "file": os.path.basename(source), "network": network},
    }
