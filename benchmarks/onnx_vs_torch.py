"""R50-FPN Mask / Faster R-CNN: the exported ONNX file under onnxruntime against our PyTorch model.

    .venv/bin/python -m benchmarks.onnx_vs_torch                    # mask, 480x640, 5 rounds
    .venv/bin/python -m benchmarks.onnx_vs_torch --archs mask faster --repeats 7 --threads 2

Per architecture: torchvision's builder with seeded random weights made to give spread-out
detections (``bench_setup.build_torchvision``: calibrated BN, scaled predictors, score threshold
0, so every image has 100 detections with masks), loaded into our model; ``rcnn.export`` writes
it as ONNX. Checked on two real fruits_nuts photos at two sizes (the model's test size and 0.8x
of it, enlarged inside the graph), batch 1 and batch 2: every onnxruntime detection is paired
with PyTorch's of the same label and nearest box; the counts must match, boxes within 1 px,
scores within 1e-3, mask IoU >= 0.95. A mask under 0.95 is explained (``explain_masks``): whether
its paste window (the grown box truncated to integers, as torchvision) moved by a pixel, its IoU
with PyTorch's own probabilities pasted into onnxruntime's box, and its IoU on confident pixels
(PyTorch probability outside 0.5 +- 0.01); it passes, as docs/CONTRACTS.md says, only where the
window moved and that IoU is >= 0.95. Then batch-1 inference is timed on one image: PyTorch
float32 as ``rcnn predict`` runs it, PyTorch float32 with ``--fast`` (frozen BN folded,
channels-last) and onnxruntime, in alternating rounds after one warm-up each, all on
``--threads`` threads; the medians are printed.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from pathlib import Path

import onnxruntime as ort
import torch

from benchmarks.bench_setup import build_ours, build_torchvision, load_samples
from rcnn.engine.runtime import keep_freed_memory
from rcnn.export.compare import mask_iou, torch_mask_probs
from rcnn.export.onnx import export_onnx
from rcnn.export.runtime import OnnxDetector
from rcnn.models.fast import optimize
from rcnn.ops.masks import paste_masks, paste_windows
from rcnn.ops.precision import cpu_isa, cpu_name
from rcnn.structures import Detections


def explain_masks(ours: Detections, ref: Detections, twin: torch.Tensor, probs):
    """Why pairs have mask IoU < 0.95: moved paste windows, the IoU of PyTorch's probabilities
    pasted into onnxruntime's boxes, and the IoU on confident pixels.

    Returns:
        the text, and whether every such pair is the contract's exception (docs/CONTRACTS.md):
        its paste window moved and PyTorch's probabilities in onnxruntime's box give its mask.
    """
    low = torch.where(mask_iou(ours.masks, ref.masks[twin]) < 0.95)[0]
    size = tuple(ours.masks.shape[-2:])
    mine, theirs = ours.boxes[low], ref.boxes[twin[low]]
    side = probs.shape[-1]
    moved = (paste_windows(mine, side) != paste_windows(theirs, side)).any(1)
    pasted = paste_masks(probs[twin[low]], mine, size)
    same_box = mask_iou(pasted, ours.masks[low])
    above = paste_masks(probs[twin[low]], theirs, size, threshold=0.51)
    below = paste_masks(probs[twin[low]], theirs, size, threshold=0.49)
    sure = above | ~below  # PyTorch's probability outside 0.49..0.51
    confident = mask_iou(ours.masks[low] & sure, ref.masks[twin[low]] & sure)
    text = (
        f"; {len(low)} under 0.95: paste window moved {int(moved.sum())}/{len(low)}, "
        f"IoU with PyTorch's probabilities in onnxruntime's box >= {float(same_box.min()):.3f}, "
        f"on confident pixels >= {float(confident.min()):.3f}"
    )
    return text, bool((moved & (same_box >= 0.95)).all())


def compare(ours: Detections, ref: Detections, probs=None) -> tuple[bool, str]:
    """Pair each of ``ours`` with ``ref``'s detection of the same label and nearest box.

    Args:
        probs: a callable giving PyTorch's mask probabilities, to explain low mask IoUs.
    """
    if len(ours.scores) != len(ref.scores):
        return False, f"{len(ours.scores)} vs {len(ref.scores)} detections"
    box_diff = (ours.boxes[:, None] - ref.boxes[None]).abs().amax(-1)
    box_diff[ours.labels[:, None] != ref.labels[None]] = float("inf")
    box_diff, twin = box_diff.min(1)
    score_diff = (ours.scores - ref.scores[twin]).abs()
    ok = bool((box_diff <= 1.0).all() and (score_diff <= 1e-3).all())
    text = f"|d box| <= {float(box_diff.max()):.1e} px, |d score| <= {float(score_diff.max()):.0e}"
    if ref.masks is not None:
        iou = mask_iou(ours.masks, ref.masks[twin])
        text += f", mask IoU >= {float(iou.min()):.3f}"
        if (iou < 0.95).any():
            explained, excused = explain_masks(ours, ref, twin, probs()) if probs else ("", False)
            ok &= excused
            text += explained
    return ok, text


def check(model, detector: OnnxDetector, images: list[torch.Tensor]) -> bool:
    """Batch 1 and batch 2 of ``images`` (one size) through both; prints one line per image."""
    with torch.no_grad():
        refs = model(images)
    together = detector(images)
    all_ok = True
    for index, (image, ref) in enumerate(zip(images, refs, strict=True)):
        probs = (lambda image=image: torch_mask_probs(model, image)) if model.has_mask else None
        for batch, ours in ((1, detector([image])[0]), (2, together[index])):
            ok, text = compare(ours, ref, probs)
            all_ok &= ok
            size = "x".join(str(s) for s in image.shape[-2:])
            print(f"  {size} image {index} batch {batch}: {'ok' if ok else 'FAIL'} ({text})")
    return all_ok


def time_rounds(runners: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each runner, one call each per round (alternating), after a warm-up."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    with torch.no_grad():
        for run in runners.values():
            run()
        for _ in range(repeats):
            for name, run in runners.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    return times


def benchmark(arch: str, size: tuple[int, int], args: argparse.Namespace) -> bool:
    samples = load_samples(size)
    model = build_ours(arch, build_torchvision(arch, samples, size), size).eval()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{arch}.onnx"
        start = time.perf_counter()
        export_onnx(model, path)
        print(f"{arch}: exported in {time.perf_counter() - start:.1f} s, "
              f"{path.stat().st_size / 2**20:.0f} MB")  # fmt: skip
        detector = OnnxDetector(path, threads=args.threads)
        small = (round(size[0] * 0.8), round(size[1] * 0.8))
        ok = check(model, detector, [s.image for s in samples])
        ok &= check(model, detector, [load_samples(small)[i].image for i in range(2)])
        fast = optimize(copy.deepcopy(model), amp="off")  # float32: BN folded, channels-last
        image = [samples[0].image]
        runners = {
            "pytorch": lambda: model(image),
            "pytorch --fast": lambda: fast(image),
            "onnxruntime": lambda: detector(image),
        }
        times = time_rounds(runners, args.repeats)
    print(f"{arch} {size[0]}x{size[1]} batch 1, {args.threads} threads, {args.repeats} rounds, "
          "median (min-max) s:")  # fmt: skip
    for name, values in times.items():
        print(f"  {name:15s} {statistics.median(values):.2f} "
              f"({min(values):.2f}-{max(values):.2f})")  # fmt: skip
    ratio = statistics.median(times["pytorch"]) / statistics.median(times["onnxruntime"])
    print(f"  pytorch / onnxruntime = {ratio:.2f}; outputs {'match' if ok else 'DIFFER'}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["mask"], choices=["mask", "faster"])
    parser.add_argument("--size", default="480x640", help="HxW of the model's test size")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the rcnn command does
    height, width = (int(v) for v in args.size.split("x"))
    print(f"{cpu_name()} ({cpu_isa()}), {os.cpu_count()} cores, torch {torch.__version__}, "
          f"onnxruntime {ort.__version__}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"load {os.getloadavg()[0]:.1f}")  # fmt: skip
    ok = all(benchmark(arch, (height, width), args) for arch in args.archs)
    print(f"load {os.getloadavg()[0]:.1f}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
