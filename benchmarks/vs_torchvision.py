"""Side-by-side speed of our R50-FPN Faster / Mask R-CNN and torchvision's, same weights and images.

Run from the repository root::

    .venv/bin/python -m benchmarks.vs_torchvision                       # both archs, both sizes
    .venv/bin/python -m benchmarks.vs_torchvision --archs mask --sizes 480x640 --repeats 3
    .venv/bin/python -m benchmarks.vs_torchvision --json results.json

Per (arch, size): torchvision's builder with seeded random weights (BN statistics from one batch,
then FrozenBN, stem + layer1 frozen: a real fine-tune) in float32 (``torchvision``) and under
bf16 autocast (``torchvision_bf16``: what a torchvision user can do on the CPU); ours from its
state dict via ``load_torchvision`` (``ours``: the default, exact model) and ``ours_fast``, ours
with the speed options and ``amp="auto"`` (``rcnn.models.fast.optimize``: bf16 autocast where the
processor has bf16 natively, AMX or AVX512-BF16, for inference and the training step alike;
float32 elsewhere). The header names the processor and its widest ISA (AVX2 / AVX-512 / AMX).
They run ALTERNATELY in one process on the same real images (fruits_nuts photos stretched to the
size), so machine noise hits all: inference (batch 1, score threshold 0, 100 detections, checked
against torchvision's) and a training step (batch 2, SGD). ``--models`` picks a subset (bf16 on a
processor without it is emulated and very slow: torch falls back to its reference convolution).
Reported: median (min-max) seconds, ratio torchvision / each, FLOPs (``torch.utils.flop_counter``),
the achieved fraction of the measured fp32 matmul peak, and peak memory: on CPU the peak RSS
(``VmHWM``, ``peak_rss_gb``) of a fresh child process per model that builds it and runs two training
steps (torch's CPU allocations are invisible to tracemalloc, and one process cannot tell two models'
peaks apart). On a GPU: AMP (bfloat16 autocast) for all, ours_fast channels-last with a compiled
backbone, images/s, and ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import bench_setup as bs
from rcnn.engine.runtime import keep_freed_memory
from rcnn.models.fast import optimize
from rcnn.ops import roi_align as roi_align_module
from rcnn.ops.precision import cpu_isa, cpu_name, resolve_amp
from rcnn.structures import Detections

OPTIONS = ("fold_bn", "channels_last", "compile_backbone")
# ours_fast's options when --options is not given: the GPU setup compiles the backbone
# (never measured: no GPU lent yet); on the project's 2-core CPU compiling gained nothing
# measurable and costs about a minute per model and size (benchmarks/README.md)
DEFAULT_OPTIONS = {"cpu": "fold_bn,channels_last", "cuda": "fold_bn,channels_last,compile_backbone"}
MODELS = ("torchvision", "torchvision_bf16", "ours", "ours_fast")
# the autocast of each model on the CPU (on a GPU every model runs under bf16 AMP)
CPU_AMP = {"torchvision_bf16": "bf16", "ours_fast": "auto"}


def device_kind() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, name: str):
    """The autocast model ``name`` runs under: bf16 AMP on a GPU; on the CPU ``CPU_AMP``."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    dtype = resolve_amp(CPU_AMP.get(name, "off"), device)
    return nullcontext() if dtype is None else torch.autocast("cpu", dtype=dtype)


def matmul_peak(device: torch.device, n: int = 2048, reps: int = 20) -> float:
    """Best GFLOP/s of fp32 ``torch.mm`` on n x n matrices (2 n^3 FLOPs each), over ``reps``
    runs: the peak, which other processes on a shared machine can only lower."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    times = []
    for _ in range(reps + 2):
        sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / min(times[2:]) / 1e9


class Runner:
    """One model's inference and training step in the benchmark's harness."""

    def __init__(self, name: str, model, arch: str, samples: list, device: torch.device):
        self.name, self.model, self.arch, self.device = name, model.to(device), arch, device
        self.samples = samples
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=0.0025, momentum=0.9, weight_decay=1e-4)

    def infer(self):
        self.model.eval()
        sample = self.samples[0]
        with torch.inference_mode(), autocast(self.device, self.name):
            if self.name.startswith("torchvision"):
                return self.model([sample.image_float.to(self.device)])[0]
            return self.model([sample.image])[0]

    def train_step(self) -> float:
        self.model.train()
        with autocast(self.device, self.name):
            if self.name.startswith("torchvision"):
                images = [s.image_float.to(self.device) for s in self.samples]
                targets = [
                    {k: v.to(self.device) for k, v in bs.target_for(s, self.arch).items()}
                    for s in self.samples
                ]
                losses = self.model(images, targets)
            else:
                losses = self.model([s.image for s in self.samples], [s.ours for s in self.samples])
            loss = sum(v for k, v in losses.items() if k.startswith("loss"))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def timed(self, what: str) -> float:
        sync(self.device)
        start = time.perf_counter()
        getattr(self, what)()
        sync(self.device)
        return time.perf_counter() - start


def build_models(
    arch: str, size: tuple[int, int], options: str, names: list[str]
) -> tuple[list, dict]:
    """(samples, {name: model}) of ``names`` (``MODELS``) from the same seeded, calibrated
    weights; each model its own copy (the training steps change them)."""
    samples = bs.load_samples(size)
    theirs = bs.build_torchvision(arch, samples, size)
    state = theirs.state_dict()
    models = {}
    for name in names:
        if name == "torchvision":
            models[name] = theirs
        elif name == "torchvision_bf16":
            models[name] = bs.load_torchvision_model(arch, state, size)
        elif name == "ours":
            models[name] = bs.build_ours(arch, theirs, size)
        else:
            models[name] = optimize_ours(bs.build_ours(arch, theirs, size), options)
    return samples, models


def optimize_ours(model, options: str):
    """``rcnn.models.fast.optimize(amp="auto")`` with the comma list ``options`` of the other
    speed options."""
    names = {o for o in options.split(",") if o}
    unknown = names - set(OPTIONS)
    if unknown:
        raise SystemExit(f"unknown --options {sorted(unknown)}; expected some of {OPTIONS}")
    return optimize(model, amp="auto", **{name: name in names for name in OPTIONS})


def alternate(runners: list[Runner], what: str, repeats: int) -> dict[str, list[float]]:
    """One untimed warm-up each, then ``repeats`` rounds running each runner once in turn."""
    for runner in runners:
        runner.timed(what)
    times = {r.name: [] for r in runners}
    for _ in range(repeats):
        for runner in runners:
            times[runner.name].append(runner.timed(what))
            gc.collect()
    return times


def count_flops(fn) -> float:
    """GFLOPs of ``fn()`` (convs and dense matmuls). RoIAlign's backward runs torchvision's kernel
    meanwhile (uncounted, as its forward): our sparse product would count as a dense
    [B H W, R S S] x [R S S, D] matmul, over a thousand GFLOPs that are never computed."""
    sparse_ratios = roi_align_module.EXACT_SPARSE_RATIOS
    roi_align_module.EXACT_SPARSE_RATIOS = ()
    try:
        with FlopCounterMode(display=False) as counter:
            fn()
    finally:
        roi_align_module.EXACT_SPARSE_RATIOS = sparse_ratios
    return counter.get_total_flops() / 1e9


def peak_rss_gb() -> float:
    """This process's peak resident memory in GB: ``VmHWM`` of ``/proc/self/status`` on Linux.

    Not ``ru_maxrss``: Linux carries that over from the parent through fork and exec, so a child
    of a parent holding 7 GB reports at least 7 GB whatever it uses itself.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def child_main(spec: str) -> None:
    """Peak RSS of one model's training in a fresh process: ``arch,HxW,impl,state_path,options``."""
    arch, size_text, impl, path, options = spec.split(",", 4)
    keep_freed_memory()  # as the parent (RCNN_MALLOC=system, inherited, turns it off)
    size = parse_size(size_text)
    device = torch.device("cpu")
    samples = bs.load_samples(size)
    state = torch.load(path, weights_only=True)
    if impl.startswith("torchvision"):
        model = bs.load_torchvision_model(arch, state, size)
    else:
        model = bs.build_ours_from_state(arch, state, size)
        if impl == "ours_fast":
            model = optimize_ours(model, options)
    del state
    runner = Runner(impl, model, arch, samples, device)
    for _ in range(2):  # the second step runs with the optimizer's momentum buffers in place
        runner.train_step()
    peak_gb = peak_rss_gb()
    print(json.dumps({"peak_gb": peak_gb}))


def peak_memory(arch, size, theirs, names, options: str) -> dict[str, dict]:
    """Run ``child_main`` for each model of ``names``, one after the other."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "state.pt")
        torch.save(theirs.state_dict(), path)
        for impl in names:
            spec = f"{arch},{size[0]}x{size[1]},{impl},{path},{options}"
            proc = subprocess.run(
                [sys.executable, "-m", "benchmarks.vs_torchvision", "--child", spec],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"memory child {spec} failed:\n{proc.stderr[-3000:]}")
            out[impl] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def parse_size(text: str) -> tuple[int, int]:
    height, width = text.lower().split("x")
    return int(height), int(width)


def summary(times: list[float]) -> dict:
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "all": times}


def bench_one(arch: str, size: tuple[int, int], args, device: torch.device, peak: float) -> dict:
    """All numbers of one (arch, size): inference and training of every model."""
    samples, models = build_models(arch, size, args.options, args.models.split(","))
    row = {"arch": bs.ARCHS[arch], "size": f"{size[0]}x{size[1]}", "device": device.type}
    row["models"] = list(models)
    row["load_before"] = os.getloadavg()
    if device.type == "cpu" and not args.no_memory:
        row["children"] = peak_memory(arch, size, models["torchvision"], list(models), args.options)
    runners = [Runner(name, model, arch, samples, device) for name, model in models.items()]
    outputs = {runner.name: runner.infer() for runner in runners}
    theirs = {
        k: v.float().cpu() if k != "labels" else v.cpu() for k, v in outputs["torchvision"].items()
    }
    row["detections"] = len(as_detections(outputs[runners[-1].name]))
    row["same_outputs"] = {
        name: bs.same_detections(theirs, as_detections(out).to("cpu"), size)
        for name, out in outputs.items()
        if name != "torchvision"
    }
    row["infer"] = {k: summary(v) for k, v in alternate(runners, "infer", args.repeats).items()}
    if not args.no_train:
        row["train"] = {
            k: summary(v) for k, v in alternate(runners, "train_step", args.repeats).items()
        }
    if device.type == "cuda":
        row["gpu_peak_gb"] = {}
        for runner in runners:
            torch.cuda.reset_peak_memory_stats(device)
            runner.timed("train_step")
            row["gpu_peak_gb"][runner.name] = torch.cuda.max_memory_allocated(device) / 2**30
    row["load_after"] = os.getloadavg()
    row["matmul_peak_gflops"] = peak
    # FLOPs last (the counted training step changes the weights), of the plain model where run
    ours = next((r for r in runners if r.name == "ours"), runners[-1])
    row["gflops"] = {"infer": count_flops(ours.infer), "train": count_flops(ours.train_step)}
    return row


def as_detections(output) -> Detections:
    """Ours as they are; torchvision's dict as ``Detections`` in float32 (labels without the
    background column, masks thresholded at 0.5)."""
    if isinstance(output, Detections):
        return output
    masks = output.get("masks")
    return Detections(
        output["boxes"].float(),
        output["scores"].float(),
        output["labels"] - 1,
        None if masks is None else masks[:, 0].float() > 0.5,
    )


def fmt(s: dict) -> str:
    return f"{s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f})"


def _timing(row: dict, mode: str, name: str, images: int) -> str:
    """Median (min-max) seconds, or images/s on a GPU, and the ratio torchvision / ``name``."""
    times = row[mode][name]
    if name == "torchvision":
        return fmt(times) if row["device"] != "cuda" else f"{images / times['median']:.1f} img/s"
    ratio = row[mode]["torchvision"]["median"] / times["median"]
    if row["device"] == "cuda":
        return f"{images / times['median']:.1f} img/s ({ratio:.2f}x)"
    return f"{fmt(times)} **{ratio:.2f}x**"


def table(rows: list[dict], images: dict[str, int]) -> str:
    """Markdown table of ``rows``: one line per arch, size and mode; a column per model (ratio
    torchvision / that model in bold), then FLOPs, % of the matmul peak, memory, outputs."""
    names = rows[0]["models"]
    head = (
        "| model | size | mode | "
        + " | ".join(f"{n} s" for n in names)
        + " | GFLOPs | % of peak "
        + " / ".join(n.replace("torchvision", "tv") for n in names[1:])
        + " | peak mem GB "
        + " / ".join(n.replace("torchvision", "tv") for n in names)
        + " | same outputs as tv | load |"
    )
    lines = [head, "|" + " --- |" * (len(names) + 8)]
    for row in rows:
        for mode in ("infer", "train"):
            if mode not in row:
                continue
            child = row.get("children", {})
            gflops = row["gflops"][mode]
            fractions = [
                f"{100 * gflops / row[mode][n]['median'] / row['matmul_peak_gflops']:.0f}%"
                for n in names[1:]
            ]  # fmt: skip
            if "gpu_peak_gb" in row:
                mem = " / ".join(f"{row['gpu_peak_gb'][n]:.1f}" for n in names)
            elif child:
                mem = " / ".join(f"{child[n]['peak_gb']:.1f}" for n in names)
            else:
                mem = "-"
            same = (
                "; ".join(f"{n}: {row['same_outputs'][n]}" for n in names[1:])
                if mode == "infer"
                else "-"
            )
            cells = [row["arch"], row["size"], f"{mode} (batch {images[mode]})"]
            cells += [_timing(row, mode, n, images[mode]) for n in names]
            cells += [f"{gflops:.0f}", " / ".join(fractions), mem, same]
            cells.append(f"{row['load_before'][0]:.1f}-{row['load_after'][0]:.1f}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", default="mask,faster", help="comma list of mask, faster")
    parser.add_argument("--sizes", default="480x640,800x1066", help="comma list of HxW")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per model and mode")
    parser.add_argument("--no-train", action="store_true", help="inference only")
    parser.add_argument(
        "--models", default=",".join(MODELS), help=f"comma list of {MODELS} (torchvision first)"
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-RSS children")
    parser.add_argument(
        "--options",
        default=None,
        help=f"speed options of a third model, ours_fast (rcnn.models.fast.optimize), comma list "
        f"of {OPTIONS}; '': no third model; default {DEFAULT_OPTIONS}",
    )
    parser.add_argument(
        "--malloc",
        choices=("rcnn", "system"),
        default="rcnn",
        help="rcnn: glibc malloc keeps freed memory, as the rcnn command sets it (for every model "
        "of the run: it is per process); system: malloc's defaults",
    )
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(args.child)
        return
    if args.malloc == "system":
        os.environ["RCNN_MALLOC"] = "system"  # this process and the memory children
    malloc_kept = keep_freed_memory()
    device = device_kind()
    if args.options is None:
        args.options = DEFAULT_OPTIONS[device.type]
    peak = matmul_peak(device)
    auto = resolve_amp("auto", device)
    header = (
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {cpu_name()} ({cpu_isa()}, "
        f"{platform.machine()}), {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), device {device.type}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
        + f"; fp32 matmul peak {peak:.0f} GFLOP/s; ours_fast = ours + options '{args.options}'"
        + f" + amp auto ({'float32' if auto is None else str(auto).split('.')[-1]} here)"
        + f"; malloc {'keeps freed memory (rcnn)' if malloc_kept else 'system defaults'}"
    )
    print(header, flush=True)
    rows = []
    for arch in args.archs.split(","):
        for size_text in args.sizes.split(","):
            rows.append(bench_one(arch, parse_size(size_text), args, device, peak))
            print(table(rows[-1:], {"infer": 1, "train": 2}).splitlines()[-1], flush=True)
    print()
    print(header)
    print(table(rows, {"infer": 1, "train": 2}))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"header": header, "rows": rows}, handle, indent=1)


if __name__ == "__main__":
    main()
