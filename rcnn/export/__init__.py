"""Deployment: ONNX export of an RCNN and its onnxruntime runner."""
