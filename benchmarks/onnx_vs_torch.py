"""R50-FPN Mask / Faster R-CNN: the exported ONNX file under onnxruntime against our PyTorch model.

    .venv/bin/python -m benchmarks.onnx_vs_torch                    # mask, 480x640, 5 repeats
    .venv/bin/python -m benchmarks.onnx_vs_torch --archs mask faster --repeats 7 --threads 2

Per architecture: torchvision's builder with seeded random weights made to give spread-out
detections (``bench_setup.build_torchvision``: calibrated BN, scaled predictors, score threshold
0, so every image has 100 detections with masks), loaded into our model; ``rcnn.export`` writes
it as ONNX. Checked on two real fruits_nuts photos at two sizes (the model's test size and 0.8x
of it, upscaled inside the graph), batch 1 and batch 2: every onnxruntime detection is paired with
PyTorch's of the same label and nearest box; the counts must match, boxes within 1 px, scores
within 1e-3, mask IoU >= 0.95. Then batch-1 inference is timed, onnxruntime and PyTorch
alternating (``--repeats`` rounds after one warm-up each), both with ``--threads`` threads.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.bench_setup import build_ours, build_torchvision, load_samples
from rcnn.engine.runtime import keep_freed_memory
from rcnn.export.onnx import export_onnx
from rcnn.export.runtime import OnnxDetector
from rcnn.structures import Detections


def compare(ours: Detections, ref: Detections) -> tuple[bool, str]:
    """Pair each of ``ours`` with ``ref``'s detection of the same label and nearest box."""
    if len(ours.scores) != len(ref.scores):
        return False, f"{len(ours.scores)} vs {len(ref.scores)} detections"
    box_diff = (ours.boxes[:, None] - ref.boxes[None]).abs().amax(-1)
    box_diff[ours.labels[:, None] != ref.labels[None]] = float("inf")
    box_diff, twin = box_diff.min(1)
    score_diff = (ours.scores - ref.scores[twin]).abs()
    ok = bool((box_diff <= 1.0).all() and (score_diff <= 1e-3).all())
    text = f"|d box| <= {float(box_diff.max()):.1e} px, |d score| <= {float(score_diff.max()):.0e}"
    if ref.masks is not None:
        a, b = ours.masks, ref.masks[twin]
        inter = (a & b).flatten(1).sum(1).float()
        union = (a | b).flatten(1).sum(1).float()
        iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))
        ok &= bool((iou >= 0.95).all())
        text += f", mask IoU >= {float(iou.min()):.3f}"
    return ok, text


def check(model, detector: OnnxDetector, images: list[torch.Tensor]) -> bool:
    """Batch 1 and batch 2 of ``images`` (one size) through both; prints one line per image."""
    with torch.no_grad():
        refs = model(images)
    together = detector(images)
    all_ok = True
    for index, (image, ref) in enumerate(zip(images, refs, strict=True)):
        for batch, ours in ((1, detector([image])[0]), (2, together[index])):
            ok, text = compare(ours, ref)
            all_ok &= ok
            size = "x".join(str(s) for s in image.shape[-2:])
            print(f"  {size} image {index} batch {batch}: {'ok' if ok else 'FAIL'} ({text})")
    return all_ok


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


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
        image = [samples[0].image]
        with torch.no_grad():
            model(image), detector(image)  # warm-up
            torch_times, onnx_times = [], []
            for _ in range(args.repeats):
                torch_times += timed(lambda: model(image), 1)
                onnx_times += timed(lambda: detector(image), 1)
    t_med, o_med = statistics.median(torch_times), statistics.median(onnx_times)
    print(f"{arch} {size[0]}x{size[1]} batch 1, {args.threads} threads, median (min-max) s:")
    print(f"  pytorch     {t_med:.3f} ({min(torch_times):.3f}-{max(torch_times):.3f})")
    print(f"  onnxruntime {o_med:.3f} ({min(onnx_times):.3f}-{max(onnx_times):.3f})")
    print(f"  pytorch / onnxruntime = {t_med / o_med:.2f}; outputs {'match' if ok else 'DIFFER'}")
    return ok


def processor() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["mask"], choices=["mask", "faster"])
    parser.add_argument("--size", default="480x640", help="HxW of the model's test size")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the rcnn command does
    height, width = (int(v) for v in args.size.split("x"))
    print(f"{processor()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"load {os.getloadavg()[0]:.1f}")  # fmt: skip
    ok = all(benchmark(arch, (height, width), args) for arch in args.archs)
    print(f"load {os.getloadavg()[0]:.1f}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
