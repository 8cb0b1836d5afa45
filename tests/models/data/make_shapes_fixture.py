"""A small trained model for tests/models/test_bf16_accuracy.py: the shapes demo, shortened.

Run by hand, never in CI (training takes 2-40 minutes depending on the machine's load)::

    PYTHONPATH=. .venv/bin/python -m rcnn.cli train --max-iters 300 --output /tmp/shapes_run
    PYTHONPATH=. .venv/bin/python tests/models/data/make_shapes_fixture.py /tmp/shapes_run/last.pth

It writes ``shapes_model_fp16.pt``: the model config and the weights rounded to float16 (half
the size; the rounded weights *are* the fixture's model, loaded back into float32).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from rcnn.engine.checkpoint import load_checkpoint

OUT = Path(__file__).resolve().parent / "shapes_model_fp16.pt"


def main(checkpoint: str) -> None:
    state = load_checkpoint(checkpoint)
    weights = {
        key: value.half() if value.is_floating_point() else value
        for key, value in state["model"].items()
    }
    torch.save({"model_config": state["config"]["model"], "state": weights}, OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main(sys.argv[1])
