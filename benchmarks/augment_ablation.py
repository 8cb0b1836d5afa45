"""Augmentation ablation from scratch on the sample datasets: flip only vs colour jitter vs
large-scale jitter (LSJ), the same iterations and model for each, CPU time measured per run.

    PYTHONPATH=. nice -n 10 python -m benchmarks.augment_ablation --out /tmp/ablation

Prints a markdown table (dataset, augmentation, metric, iterations, CPU seconds of the training
process and its children). Each run is ``rcnn train`` with the narrow shapes preset, from scratch
(no ImageNet weights), as in the README's sample-data section.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
DATASETS = {
    "raccoon": {
        "args": ["--set", "model.mask_on=false", "--set", "model.input.train_short=[256]",
                 "--set", "model.input.test_short=256", "--set", "model.input.max_size=384"],
        "iters": 300,
    },
    "balloon": {
        "args": ["--set", "model.input.train_short=[320]", "--set", "model.input.test_short=320",
                 "--set", "model.input.max_size=480"],
        "iters": 900,
    },
}  # fmt: skip
DEFAULT_SEED = 233  # rcnn train's default --seed
VARIANTS = {
    "flip 0.5 (default)": [],
    "+ colour jitter 0.3": ["--color-jitter", "0.3"],
    "+ LSJ 0.5-1.5": ["--scale-jitter", "0.5,1.5"],
    "+ colour + LSJ": ["--color-jitter", "0.3", "--scale-jitter", "0.5,1.5"],
}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_one(dataset: str, variant: str, out: Path, seed: int = DEFAULT_SEED) -> dict:
    spec = DATASETS[dataset]
    folder = out / f"{dataset}_{list(VARIANTS).index(variant)}"
    folder = folder / f"seed{seed}" if seed != DEFAULT_SEED else folder
    command = [sys.executable, "-m", "rcnn.cli", "train", "--network", "mask_rcnn_shapes",
               "--dataset", str(DATA / dataset), *spec["args"], "--max-iters", str(spec["iters"]),
               "--batch-size", "4", "--num-workers", "1", "--val-interval", "0",
               "--save-interval", "0", "--output", str(folder), "--seed", str(seed),
               *VARIANTS[variant]]  # fmt: skip
    before = _children_cpu()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = json.loads((folder / "final_metrics.json").read_text())
    return {"cpu_s": _children_cpu() - before, "metrics": metrics, "iters": spec["iters"]}


def _metric(metrics: dict) -> str:
    if "segm" in metrics:
        return f"box AP {metrics['bbox']['AP']:.3f}, mask AP {metrics['segm']['AP']:.3f}"
    return f"VOC07 mAP {metrics['voc07']['mAP']:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="ablation_runs")
    parser.add_argument("--datasets", default="raccoon,balloon")
    parser.add_argument("--variants", default=",".join(str(i) for i in range(len(VARIANTS))))
    parser.add_argument("--seeds", default=str(DEFAULT_SEED), help="training seeds (a row each)")
    args = parser.parse_args()
    names = list(VARIANTS)
    print("| dataset | augmentation | seed | result | iterations | CPU s |")
    print("|---|---|---|---|---|---|")
    for dataset in args.datasets.split(","):
        for index in args.variants.split(","):
            variant = names[int(index)]
            for seed in (int(s) for s in args.seeds.split(",")):
                row = run_one(dataset, variant, Path(args.out), seed)
                print(f"| {dataset} | {variant} | {seed} | {_metric(row['metrics'])} | "
                      f"{row['iters']} | {row['cpu_s']:.0f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
