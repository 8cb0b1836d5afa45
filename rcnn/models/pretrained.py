"""ImageNet initialisation of the ResNet body from a local file: nothing is ever downloaded.

Where the weights come from (first match wins):

1. ``backbone.weights`` in the config (an explicit path: a missing file is an error);
2. ``$RCNN_BACKBONE_WEIGHTS`` (likewise);
3. torchvision's own file in the torch hub cache, ``torch.hub.get_dir()/checkpoints/<file>``: the
   file ``torchvision.models.<name>(weights="IMAGENET1K_V1")`` downloads (the weights torchvision's
   detection builders start from).

When none is there, a warning names the file expected and the URL to fetch it from, and the body
keeps its random initialisation. The file is torchvision's ResNet state dict (``fc.*`` is dropped);
any other missing or unexpected key is a ``CheckpointError``.
"""

from __future__ import annotations

import logging
import os

import torch
import torchvision
from torch import Tensor, nn

from rcnn.errors import CheckpointError
from rcnn.models.config import BackboneConfig, ModelConfig
from rcnn.models.state_dict import load_state_dict_checked, read_state_dict

logger = logging.getLogger(__name__)

ENV_VAR = "RCNN_BACKBONE_WEIGHTS"


def imagenet_url(name: str) -> str:
    """URL of torchvision's IMAGENET1K_V1 weights for backbone ``name`` (e.g. ``resnet50``)."""
    return torchvision.models.get_model_weights(name)["IMAGENET1K_V1"].url


def hub_cache_path(name: str) -> str:
    """Where torchvision keeps the file of ``imagenet_url(name)`` once downloaded."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(imagenet_url(name)))


def find_weights(cfg: BackboneConfig) -> str | None:
    """The local ImageNet weight file for ``cfg`` or None (with a warning saying what to fetch)."""
    explicit, origin = cfg.weights, "model.backbone.weights"
    if not explicit:
        explicit, origin = os.environ.get(ENV_VAR, ""), f"${ENV_VAR}"
    if explicit:
        if not os.path.isfile(explicit):
            raise CheckpointError(f"{explicit}: backbone weight file (from {origin}) not found")
        return explicit
    width = getattr(cfg, "width", 64)
    if cfg.stem != "torchvision" or width != 64 or cfg.name not in torchvision.models.list_models():
        logger.warning(
            "no ImageNet weights for %s (stem %s, width %d): torchvision publishes none; set %s "
            "or model.backbone.weights to a converted state dict; the body starts from random init",
            cfg.name,
            cfg.stem,
            width,
            ENV_VAR,
        )
        return None
    path = hub_cache_path(cfg.name)
    if os.path.isfile(path):
        return path
    logger.warning(
        "ImageNet weights for %s not found at %s (nothing is downloaded): fetch %s to that path, "
        "or set %s; the body starts from random initialisation",
        cfg.name,
        path,
        imagenet_url(cfg.name),
        ENV_VAR,
    )
    return None


def _subset(state: dict[str, Tensor], module: nn.Module, prefix: str = "") -> dict[str, Tensor]:
    """Keys under ``prefix`` (stripped), without BN counters the module does not keep."""
    own = set(module.state_dict())
    out = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return {k: v for k, v in out.items() if k in own or not k.endswith("num_batches_tracked")}


def load_pretrained_base(
    body: nn.Module, cfg: ModelConfig, *, res5: nn.Module | None = None
) -> str | None:
    """Load ImageNet weights into ``body`` (and ``res5``: a C4 model's ``layer4``).

    Returns:
        the file loaded, or None (``pretrained_base`` off, or no file: random initialisation).

    Raises:
        CheckpointError: an explicit path that does not exist, an unreadable file, or keys that
            do not fit (all listed).
    """
    if not cfg.backbone.pretrained_base:
        return None
    path = find_weights(cfg.backbone)
    if path is None:
        return None
    state = {k: v for k, v in read_state_dict(path).items() if not k.startswith("fc.")}
    if res5 is not None:
        load_state_dict_checked(res5, _subset(state, res5, "layer4."), source=path)
        state = {k: v for k, v in state.items() if not k.startswith("layer4.")}
    load_state_dict_checked(body, _subset(state, body), source=path)
    logger.info("ImageNet weights for %s loaded from %s", cfg.backbone.name, path)
    return path
