"""rcnn: train, evaluate, run and inspect Faster R-CNN and Mask R-CNN in PyTorch."""

__version__ = "0.1.0"
