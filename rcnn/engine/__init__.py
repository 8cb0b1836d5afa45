"""The training engine: the loop (``train``), checkpoints, distributed set-up, logging, optimizer.

``rcnn.engine.inference`` (dataset-wide prediction) belongs to the evaluation side.
"""

from rcnn.engine.checkpoint import load_checkpoint, load_model, save_checkpoint
from rcnn.engine.train import NonFiniteLossError, TrainResult, train

__all__ = [
    "NonFiniteLossError",
    "TrainResult",
    "load_checkpoint",
    "load_model",
    "save_checkpoint",
    "train",
]
