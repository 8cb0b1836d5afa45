"""Other toolkits' weights -> ours: a pure key-mapping layer.

Each converter takes a state dict (or a file holding one) and gives our state dict and the
model-config changes it implies (class names, BN epsilon...); it never builds a model. Our model
from a peer's file: ``rcnn.zoo`` (``get_model(..., pretrained=FILE)``, ``load_torchvision``) and
``rcnn.convert`` (GluonCV, Detectron2).

- ``rcnn.weights.torchvision``: torchvision's Faster / Mask R-CNN builders.
- ``rcnn.weights.gluoncv``: GluonCV's R-CNN ``.params`` (``rcnn.weights.mxnet_params`` reads them).
- ``rcnn.weights.detectron2``: Detectron2's ``.pkl`` / ``.pth`` with its config
  (``rcnn.weights.detectron2_config``).
"""

from __future__ import annotations

from rcnn.models.state_dict import load_state_dict_checked, read_state_dict

__all__ = [
    "PeerWeights",
    "load_detectron2",
    "load_gluoncv",
    "load_state_dict_checked",
    "read_state_dict",
]

# the peers' converters use the helpers above: imported last
from rcnn.weights.detectron2 import load_detectron2
from rcnn.weights.gluoncv import load_gluoncv
from rcnn.weights.peer import PeerWeights
