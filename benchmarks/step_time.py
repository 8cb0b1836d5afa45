"""Seconds per training step and per inference of two presets, for two source trees, alternately.

    python benchmarks/step_time.py --trees OLD_TREE NEW_TREE --rounds 5

Each measurement is a fresh process (``PYTHONPATH`` = the tree) that builds the model with a fixed
seed, runs one warm-up, then times ``--steps`` training steps (forward + backward) and as many
inferences, and prints the medians. The trees alternate round by round, so a shared machine's load
falls on both alike; the table gives the median over rounds. Models: ``mask_rcnn_shapes`` (batch
of 8 images at 128 px, as ``rcnn train`` runs it) and ``maskrcnn_resnet50_fpn`` (random init, a
batch of 2 images at 320 px, inference at 320 px).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CASES = {
    "shapes": ("mask_rcnn_shapes", 128, 8),
    "r50fpn": ("maskrcnn_resnet50_fpn", 320, 2),
}


def measure(case: str, steps: int, threads: int) -> dict[str, float]:
    """Median seconds of one training step and one inference (run inside the tree measured)."""
    import numpy as np
    import torch

    from rcnn.models.build import build_model
    from rcnn.structures import Targets
    from rcnn.zoo import get_preset

    torch.set_num_threads(threads)
    name, size, batch = CASES[case]
    cfg = get_preset(name).model
    cfg.backbone.pretrained_base = False
    cfg.input.test_short = cfg.input.max_size = size
    torch.manual_seed(0)
    model = build_model(cfg).train()
    gen = torch.Generator().manual_seed(1)
    images = [torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=gen)] * batch
    box = [size * 0.1, size * 0.2, size * 0.6, size * 0.7]
    x1, y1, x2, y2 = box
    polygon = [np.array([x1, y1, x2, y1, x2, y2, x1, y2], dtype=np.float64)]
    target = Targets(torch.tensor([box]), torch.tensor([0]), torch.tensor([False]), 0,
                     (size, size), (size, size), masks=[polygon])  # fmt: skip
    targets = [target] * batch

    def train_step() -> None:
        losses = model(images, targets)
        sum(v for k, v in losses.items() if k.startswith("loss_")).backward()

    def infer() -> None:
        with torch.no_grad():
            model(images[:1])

    out = {}
    for label, fn, mode in (("train_step_s", train_step, True), ("inference_s", infer, False)):
        model.train(mode)
        fn()  # warm-up
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        out[label] = statistics.median(times)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", nargs="+", default=[os.getcwd()])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cases", nargs="+", default=list(CASES))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.steps, args.threads)))
        return
    results: dict[tuple[str, str], list[dict]] = {}
    for _ in range(args.rounds):
        for case in args.cases:
            for tree in args.trees:
                command = [sys.executable, __file__, "--child", case, "--steps", str(args.steps),
                           "--threads", str(args.threads)]  # fmt: skip
                env = dict(os.environ, PYTHONPATH=tree)
                text = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
                results.setdefault((case, tree), []).append(json.loads(text.stdout))
    for (case, tree), runs in results.items():
        train = statistics.median(r["train_step_s"] for r in runs)
        infer = statistics.median(r["inference_s"] for r in runs)
        print(f"{case:7s} {tree}: train step {train:.3f} s, inference {infer:.3f} s ({len(runs)})")


if __name__ == "__main__":
    main()
