"""`rcnn train`: train Faster R-CNN / Mask R-CNN; with no arguments, the shapes demo on the CPU.

The config is resolved by ``rcnn.resolve.resolve_config``: defaults → the preset's published
recipe (``--network``) → ``--config`` file → explicit flags → ``--set key=value``. With
``--resume``, the checkpoint's config is the base and the flags may only change what does not alter
the run (output, intervals, epochs, workers).
Every check on user input (network, dataset, GPUs, checkpoint, classes) runs before training.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import torch.multiprocessing as mp

from rcnn.cli.data_options import DATA_FLAGS, KEEP_EMPTY_HELP
from rcnn.config import TrainConfig, dump_yaml
from rcnn.engine import distributed as du
from rcnn.engine import runner
from rcnn.engine.checkpoint import load_checkpoint
from rcnn.errors import UserError
from rcnn.fileio import output_folder
from rcnn.resolve import resolve_config

logger = logging.getLogger(__name__)

# (flag, config key, help); every value goes through the same type checks as --set.
FLAGS = [
    ("--network", "network", "model preset (rcnn.list_models()); default mask_rcnn_shapes"),
    (
        "--weights",
        "weights",
        "initial weights: an rcnn checkpoint (e.g. from rcnn convert); class rows kept by name",
    ),
    ("--dataset", "dataset", "coco | voc | shapes | a path: COCO, VOC, labelme, PNG masks, YOLO"),
    ("--data-root", "data_root", "folder of coco/voc (or where shapes is generated)"),
    ("--output", "output", "run folder (default runs/<network>_<dataset>_<time>/)"),
    ("--gpus", "gpus", "GPU ids, e.g. 0,1,2,3 (one DDP process each); empty: CPU"),
    ("--batch-size", "batch_size", "images per iteration over all processes (lr scales along)"),
    ("--epochs", "epochs", "training length in epochs (may be fractional)"),
    ("--max-iters", "max_iters", "training length in iterations (overrides --epochs)"),
    ("--lr", "lr", "base learning rate (default: the recipe's, scaled to --batch-size)"),
    ("--lr-decay", "lr_decay", "step decay factor"),
    ("--lr-decay-epoch", "lr_decay_epoch", "epochs of the step decays, e.g. 17,23"),
    ("--lr-warmup", "lr_warmup", "linear warmup iterations (0: none)"),
    ("--lr-warmup-factor", "lr_warmup_factor", "warmup start factor (GluonCV: 1/3)"),
    ("--lr-schedule", "lr_schedule", "step | cosine"),
    ("--wd", "wd", "weight decay"),
    ("--momentum", "momentum", "SGD momentum"),
    ("--num-workers", "num_workers", "data loader worker processes per training process"),
    ("--save-interval", "save_interval", "checkpoint period: N or Nep epochs, or Nit iterations"),
    ("--val-interval", "val_interval", "validation period: N or Nep epochs, or Nit iterations"),
    ("--log-interval", "log_interval", "iterations between log lines and metrics.jsonl rows"),
    ("--seed", "seed", "random seed"),
    ("--clip-gradient", "clip_grad", "max gradient norm (0: off)"),
    ("--accumulate", "accumulate", "micro-batches per iteration (gradient accumulation)"),
    ("--early-stop-patience", "early_stop_patience", "validations without gain (0: off)"),
    ("--val-max-images", "val_max_images", "validate on the first N val images (0: all)"),
    ("--flip-prob", "flip_prob", "probability of a horizontal flip (0.5)"),
    ("--color-jitter", "color_jitter", "brightness/contrast/saturation jitter strength (0: off)"),
    ("--scale-jitter", "scale_jitter", "large-scale jitter factors LO,HI with random crop"),
    *[(flag, f"dataset_options.{key}", text) for flag, key, text in DATA_FLAGS],
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "intervals: '2' or '2ep' = every 2 epochs, '500it' = every 500 iterations, '0' = only at\n"
        "the end. Run folder: config.yaml, metrics.jsonl, tensorboard/, last.pth, best.pth,\n"
        "final_metrics.json, predictions.png, summary.json.\n"
        "examples:\n"
        "  rcnn train                                   # shapes demo, CPU, a few minutes\n"
        "  rcnn train --network mask_rcnn_fpn_resnet50_v1b_coco --dataset coco --gpus 0,1,2,3\n"
        "  rcnn train --dataset my/coco.json --set model.rpn.nms_thresh=0.6 --amp\n"
        "  torchrun --nproc_per_node 4 -m rcnn.cli train --gpus 0,1,2,3 ...  # multi-node too"
    )
    aliases = {"--num-workers": ["-j"]}  # GluonCV's short form
    for flag, key, help_text in FLAGS:
        names = [*aliases.get(flag, []), flag]
        parser.add_argument(*names, dest=key, default=None, metavar=key.split(".")[-1].upper(),
                            help=help_text)  # fmt: skip
    parser.add_argument("-c", "--config", default=None, help="yaml file of config keys")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. --set model.rpn.nms_thresh=0.6 (repeatable)",
    )
    parser.add_argument("--resume", default=None, help="checkpoint (or run folder) to continue")
    parser.add_argument(
        "--amp",
        nargs="?",
        const="auto",
        default=None,
        choices=["off", "auto", "bf16", "fp16"],
        help="mixed precision (alone: bf16 where supported, fp16 on older GPUs)",
    )
    parser.add_argument(
        "--sync-bn",
        dest="sync_bn",
        action="store_const",
        const="true",
        default=None,
        help="SyncBatchNorm across processes",
    )
    parser.add_argument(
        "--keep-empty",
        dest="dataset_options.keep_empty",
        action="store_const",
        const="true",
        default=None,
        help=KEEP_EMPTY_HELP,
    )
    parser.add_argument(
        "--deterministic",
        action="store_const",
        const="true",
        default=None,
        help="torch.use_deterministic_algorithms (slower)",
    )
    parser.add_argument(
        "--fast",
        action="store_const",
        const="true",
        default=None,
        help="frozen BN folded into convs + channels-last (rcnn.models.fast): faster, same "
        "checkpoints, float rounding differs from the default model",
    )


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, dict | None]:
    """The resolved, validated config (``rcnn.resolve.resolve_config``: flags are overrides,
    ``--set`` items come after them) and the checkpoint to resume, or None."""
    flags = [(key, getattr(args, key)) for _, key, _ in FLAGS]
    flags += [
        (key, getattr(args, key))
        for key in ("amp", "sync_bn", "deterministic", "fast", "dataset_options.keep_empty")
    ]
    explicit = [f"{key}={value}" for key, value in flags if value is not None]
    state = load_checkpoint(args.resume) if args.resume else None
    cfg = resolve_config(
        file=args.config,
        overrides=explicit + list(args.overrides),
        checkpoint=state,
        resume=args.resume,
    )
    return cfg, state


def default_run_dir(cfg: TrainConfig) -> Path:
    if cfg.output:
        return Path(cfg.output)
    if cfg.resume:
        resume = Path(cfg.resume)
        return resume if resume.is_dir() else resume.parent
    dataset = cfg.dataset if cfg.dataset in ("coco", "voc", "shapes") else Path(cfg.dataset).stem
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.network}_{dataset}_{stamp}"


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    cfg, state = config_from_args(args)
    gpus = du.parse_gpus(cfg.gpus)
    _check_sync_bn(cfg, gpus, du.launched_by_torchrun())
    if cfg.dataset not in ("coco", "voc", "shapes") and not os.path.exists(cfg.dataset):
        raise UserError(f"--dataset {cfg.dataset}: no such file or folder")
    if cfg.output and os.path.exists(cfg.output) and not os.path.isdir(cfg.output):
        raise UserError(f"--output {cfg.output}: is an existing file, not a folder")
    spawn = len(gpus) > 1 and not du.launched_by_torchrun()
    ctx = None if spawn else du.init_from_env(gpus)
    is_main = ctx is None or ctx.is_main
    try:
        # under torchrun, rank 0 reads (or generates) the data first; the others then read it
        if not is_main:
            du.barrier()
        datasets, run_dir = _prepare(cfg, state, is_main)
        if is_main:
            du.barrier()
        run_dir = Path(du.broadcast_object(str(run_dir)))  # one folder, whatever the clocks say
        if spawn:
            return _spawn(cfg, gpus, run_dir)
        result = runner.run_process(cfg, ctx, run_dir, datasets=datasets, resume_state=state)
        if is_main:
            _print_summary(runner.finish(cfg, run_dir, result, datasets), start)
    finally:
        du.cleanup()
    return 0


def _check_sync_bn(cfg: TrainConfig, gpus: list[int], torchrun: bool) -> None:
    """SyncBatchNorm runs on CUDA only: on the CPU a multi-process run would end in a traceback
    from every rank at the first forward pass; one process has nothing to synchronise."""
    if not cfg.sync_bn or gpus:
        return
    if torchrun:
        raise UserError(
            "--sync-bn needs GPUs (torch's SyncBatchNorm has no CPU implementation); give "
            "--gpus, or train on the CPU without --sync-bn"
        )
    logger.warning("--sync-bn ignored: a single CPU process has no batch norm to synchronise")


def _prepare(cfg: TrainConfig, state: dict | None, is_main: bool):
    """Datasets (classes into the model config) and the run folder with its config.yaml."""
    datasets = runner.build_datasets(cfg)
    runner.set_classes(cfg, datasets, state)
    run_dir = default_run_dir(cfg)
    if is_main:
        _check_run_dir(run_dir, cfg)
        dump_yaml(cfg, run_dir / "config.yaml")
        logger.info(
            "run folder %s; %d train / %d val images, classes %s",
            run_dir,
            len(datasets.train),
            len(datasets.val),
            list(cfg.model.classes),
        )
    return datasets, run_dir


def _check_run_dir(run_dir: Path, cfg: TrainConfig) -> None:
    output_folder(run_dir)  # an existing file, or a folder that cannot be written
    if not cfg.resume and (run_dir / "last.pth").exists():
        raise UserError(
            f"--output {run_dir} already holds a run (last.pth); continue it with --resume "
            f"{run_dir} or choose another folder"
        )


def _spawn(cfg: TrainConfig, gpus: list[int], run_dir: Path) -> int:
    """One process per GPU; a failed process is a one-line error (its own message came first)."""
    try:
        du.spawn_workers(_spawned, len(gpus), args=(cfg, gpus, str(run_dir)))
    except mp.ProcessExitedException as error:
        raise UserError(
            f"training process {error.error_index} exited with code {error.exit_code} "
            "(its message is above)"
        ) from None
    except mp.ProcessRaisedException as error:
        last = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown error"
        raise UserError(f"a training process failed: {last}") from None
    return 0


def _spawned(local_rank: int, cfg: TrainConfig, gpus: list[int], run_dir: str) -> None:
    """One process of a ``--gpus`` run (errors are one line on stderr, then a non-zero exit)."""
    logging.basicConfig(level=logging.INFO if local_rank == 0 else logging.WARNING)
    state = None
    try:
        if cfg.resume:
            state = load_checkpoint(cfg.resume)
        ctx = du.init_from_env(gpus)
        datasets = runner.build_datasets(cfg)
        result = runner.run_process(cfg, ctx, Path(run_dir), datasets=datasets, resume_state=state)
        if ctx.is_main:
            _print_summary(runner.finish(cfg, Path(run_dir), result, datasets), None)
    except UserError as error:
        print(f"rcnn train: error (rank {local_rank}): {error}", file=sys.stderr)
        sys.exit(2)
    finally:
        du.cleanup()


def _print_summary(summary: dict, start: float | None) -> None:
    metrics = summary["metrics"]
    print(f"run folder: {summary['run_dir']}")
    for key in ("bbox", "segm"):
        if key in metrics:
            m = metrics[key]
            print(f"{key:5s} AP {_num(m['AP'])}  AP50 {_num(m['AP50'])}  AP75 {_num(m['AP75'])}")
    for key in ("voc07", "voc12"):
        if key in metrics:
            print(f"{key} mAP {_num(metrics[key]['mAP'])}")
    if summary.get("val_loss") is not None:
        print(f"validation loss {summary['val_loss']:.4f}")
    wall = time.perf_counter() - start if start is not None else summary["wall_time_s"]
    print(
        f"{summary['iterations']} iterations, wall time {wall:.0f} s"
        + (" (stopped early)" if summary["stopped_early"] else "")
    )
    if summary.get("picture"):
        print(f"predictions: {summary['picture']}")


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
