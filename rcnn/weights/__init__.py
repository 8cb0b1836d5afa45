"""Other toolkits' weights -> ours: a pure key-mapping layer.

Each converter takes a state dict (or a file holding one) and gives our state dict and the
model-config changes it implies (class names, BN epsilon...); it never builds a model. Our model
from a peer's file: ``rcnn.zoo`` (``get_model(..., pretrained=FILE)``, ``load_torchvision``).

- ``rcnn.weights.torchvision``: torchvision's Faster / Mask R-CNN builders.
"""

from __future__ import annotations

from rcnn.models.state_dict import load_state_dict_checked, read_state_dict

__all__ = ["load_state_dict_checked", "read_state_dict"]
