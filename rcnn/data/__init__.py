"""Datasets (COCO, VOC, shapes), transforms and loaders: ``(uint8 image [3,H,W], Targets)``."""

from rcnn.data.augment import TrainTransform
from rcnn.data.build import build_dataset
from rcnn.data.dataset import DetectionDataset, targets_from_record
from rcnn.data.images import read_image
from rcnn.data.loader import build_test_loader, build_train_loader, collate
from rcnn.data.shapes import make_shapes
from rcnn.data.transforms import ValTransform

__all__ = [
    "DetectionDataset",
    "TrainTransform",
    "ValTransform",
    "build_dataset",
    "build_test_loader",
    "build_train_loader",
    "collate",
    "make_shapes",
    "read_image",
    "targets_from_record",
]
