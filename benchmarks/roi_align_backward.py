"""RoIAlign's backward: ours (one sparse product, ``rcnn.ops.roi_align``) vs torchvision's kernel.

Run from the repository root::

    .venv/bin/python -m benchmarks.roi_align_backward

For the sizes the presets meet (R50-FPN levels at 800x1066, batch 2, 1024 sampled RoIs of 7x7,
sampling ratio 2, every level given all of them where a model splits them among the levels; the
shapes demo's 8 x 64 x 32 x 32 level with 512 RoIs, ratio 1), each backward
runs ``--repeats`` times alternately on the same random RoIs and output gradient; printed: the best
milliseconds of each, the ratio torchvision / ours, and whether the two gradients are the same
bits. torchvision's kernel runs in one call (one thread), as ``torchvision.ops.roi_align`` does;
the model itself splits it over threads when the sparse path is not used.
"""

from __future__ import annotations

import argparse
import time

import torch

from rcnn.ops.roi_align import _backward, _sparse_backward, sparse_backward_is_exact

# (name, feature shape B x D x H x W, RoIs, output side, sampling ratio, image side in pixels)
CASES = (
    ("R50-FPN p2, 800x1066", (2, 256, 200, 272), 1024, 7, 2, 1088),
    ("R50-FPN p3", (2, 256, 100, 136), 1024, 7, 2, 1088),
    ("R50-FPN p4", (2, 256, 50, 68), 1024, 7, 2, 1088),
    ("R50-FPN mask 14x14, p2", (2, 256, 200, 272), 256, 14, 2, 1088),
    ("shapes demo p2", (8, 64, 32, 32), 512, 7, 1, 128),
)


def random_rois(batch: int, count: int, image: int, generator: torch.Generator) -> torch.Tensor:
    """[count, 5] (image index, x1, y1, x2, y2): boxes of 1-30% of the image, some crossing it."""
    xy = torch.rand(count, 2, generator=generator) * image
    wh = (torch.rand(count, 2, generator=generator) * 0.29 + 0.01) * image
    index = torch.randint(batch, (count, 1), generator=generator).float()
    return torch.cat([index, xy, xy + wh], 1)


def best_ms(fn, repeats: int) -> tuple[float, torch.Tensor]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return 1e3 * min(times), out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; sparse backward exact "
          f"on this build: {sparse_backward_is_exact()}")  # fmt: skip
    print("| case | torchvision ms | ours ms | ratio | same bits |")
    print("| --- | --- | --- | --- | --- |")
    gen = torch.Generator().manual_seed(0)
    for name, shape, count, side, ratio, image in CASES:
        rois = random_rois(shape[0], count, image, gen)
        grad = torch.randn(count, shape[1], side, side, generator=gen)
        scale = shape[2] / image
        args_ = (shape, (side, side), scale, ratio, False)
        theirs_ms, theirs = best_ms(lambda: _backward(grad, rois, *args_), args.repeats)  # noqa: B023
        ours_ms, ours = best_ms(lambda: _sparse_backward(grad, rois, *args_), args.repeats)  # noqa: B023
        same = torch.equal(ours.contiguous().view(torch.int32), theirs.view(torch.int32))
        print(f"| {name} | {theirs_ms:.1f} | {ours_ms:.1f} | {theirs_ms / ours_ms:.2f}x | {same} |")


if __name__ == "__main__":
    main()
