"""rcnn: train, evaluate, run and inspect Faster R-CNN and Mask R-CNN in PyTorch."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # lazy exports: `import rcnn` stays cheap (no torch import until a model is asked for)
    if name in ("get_model", "list_models"):
        from rcnn import zoo

        return getattr(zoo, name)
    raise AttributeError(f"module 'rcnn' has no attribute {name!r}")
