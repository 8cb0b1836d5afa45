"""Subprocess entry for the kill/resume test: ``python run_tiny.py RUN_DIR [--resume] [--delay S]``.

Trains the stand-in detector on the tiny dataset with the real train loader, single-threaded and
deterministic; ``--resume`` continues from ``RUN_DIR/last.pth``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_tiny import TinyDetector, TinySet, tiny_config

from rcnn.engine.checkpoint import load_checkpoint
from rcnn.engine.train import train


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--iters", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    cfg = tiny_config(max_iters=args.iters, save_interval="2it")
    torch.manual_seed(0)  # the initial weights (a resume overwrites them)
    state = load_checkpoint(Path(args.run_dir) / "last.pth") if args.resume else None
    train(
        cfg,
        TinyDetector(delay=args.delay),
        TinySet(8),
        run_dir=Path(args.run_dir),
        resume_state=state,
    )
    Path(args.run_dir, "done").write_text("ok")


if __name__ == "__main__":
    main()
