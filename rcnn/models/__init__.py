"""Faster / Mask R-CNN models: backbone, FPN, RPN, RoI heads and the assembled RCNN."""
