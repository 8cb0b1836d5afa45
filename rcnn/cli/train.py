"""`rcnn train`: train Faster R-CNN / Mask R-CNN; with no arguments, the shapes demo on the CPU.

The config is resolved as: defaults → the preset's published recipe (``--network``) → ``--config``
file → explicit flags → ``--set key=value``. With ``--resume``, the checkpoint's config is the base
and the flags may only change what does not alter the run (output, intervals, epochs, workers).
Every check on user input (network, dataset, GPUs, checkpoint, classes) runs before training.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from rcnn.cli.data_options import DATA_FLAGS, KEEP_EMPTY_HELP
from rcnn.config import (
    RESUMABLE_KEYS,
    TrainConfig,
    absolute_paths,
    apply_dict,
    apply_overrides,
    config_diff,
    config_from_dict,
    dump_yaml,
    load_yaml,
    to_dict,
)
from rcnn.errors import UserError
from rcnn.fileio import output_folder

logger = logging.getLogger(__name__)

# (flag, config key, help); every value goes through the same type checks as --set.
FLAGS = [
    ("--network", "network", "model preset (rcnn.list_models()); default mask_rcnn_shapes"),
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


def resolve_config(args: argparse.Namespace) -> tuple[TrainConfig, dict | None]:
    """The resolved, validated config and the checkpoint to resume (``UserError`` on bad input)."""
    explicit = [
        f"{key}={getattr(args, key)}" for _, key, _ in FLAGS if getattr(args, key) is not None
    ]
    explicit += [
        f"{key}={getattr(args, key)}"
        for key in ("amp", "sync_bn", "deterministic", "fast", "dataset_options.keep_empty")
        if getattr(args, key) is not None
    ]
    file_data = load_yaml(args.config) if args.config else {}
    state = None
    if args.resume:
        from rcnn.engine.checkpoint import load_checkpoint

        state = load_checkpoint(args.resume)
        cfg = config_from_dict(state["config"])
    else:
        cfg = _from_preset(_network(args, file_data))
    apply_dict(cfg, {k: v for k, v in file_data.items() if k != "network" or not args.resume})
    recipe_batch, recipe_lr = cfg.batch_size, cfg.lr
    recipe_options = dict(cfg.dataset_options)
    apply_overrides(cfg, explicit + list(args.overrides))
    absolute_paths(cfg, state["config"] if state else None)  # resumable from any folder
    _drop_foreign_options(cfg, recipe_options)
    given = {item.partition("=")[0].strip() for item in explicit + list(args.overrides)}
    if state is None and "lr" not in given and "lr" not in file_data:
        _scale_lr(cfg, recipe_batch, recipe_lr)
    if state is not None:
        _check_resume_config(state, cfg, args.resume)
        cfg.resume = str(args.resume)
        if "output" not in given:  # the folder resumed, not where the run was first written
            resume = Path(args.resume)
            cfg.output = str(resume if resume.is_dir() else resume.parent)
    cfg.validate()
    return cfg, state


def _drop_foreign_options(cfg: TrainConfig, recipe_options: dict) -> None:
    """A recipe's dataset options for another dataset (shapes sizes) do not follow --dataset."""
    from rcnn.engine.runner import DATASET_OPTIONS

    valid = DATASET_OPTIONS["shapes" if cfg.dataset == "shapes" else "other"]
    for key, value in recipe_options.items():
        if key not in valid and cfg.dataset_options.get(key) == value:
            del cfg.dataset_options[key]


def _scale_lr(cfg: TrainConfig, recipe_batch: int, recipe_lr: float) -> None:
    """Linear scaling rule (GluonCV: ``lr = 0.00125 * batch_size`` unless --lr is given)."""
    if cfg.batch_size != recipe_batch:
        cfg.lr = recipe_lr * cfg.batch_size / recipe_batch
        logger.info(
            "lr %.4g (the recipe's %.4g at batch size %d, scaled to %d)",
            cfg.lr,
            recipe_lr,
            recipe_batch,
            cfg.batch_size,
        )


def _network(args: argparse.Namespace, file_data: dict) -> str:
    for item in reversed(args.overrides):
        if item.partition("=")[0].strip() == "network":
            return item.partition("=")[2].strip()
    return args.network or file_data.get("network") or TrainConfig.network


def _from_preset(network: str) -> TrainConfig:
    from rcnn.zoo import get_preset

    preset = get_preset(network)  # UserError listing the known names
    cfg = TrainConfig(network=network)
    for key, value in preset.recipe.items():
        apply_dict(cfg, {key: list(value) if isinstance(value, tuple) else value})
    cfg.model = preset.model
    return cfg


def _check_resume_config(state: dict, cfg: TrainConfig, path: str) -> None:
    # the saved config with today's defaults for keys it predates (e.g. flip_prob)
    saved, now = to_dict(config_from_dict(state["config"])), to_dict(cfg)
    changed = [k for k in config_diff(saved, now) if k.split(".")[0] not in RESUMABLE_KEYS]
    changed = [k for k in changed if k != "model.classes"]  # checked against the dataset later
    if changed:
        shown = ", ".join(f"{k} ({_get(saved, k)!r} -> {_get(now, k)!r})" for k in changed[:4])
        raise UserError(
            f"--resume {path}: this run's config differs from the checkpoint's: {shown}; resume "
            "with the same settings, or start a new run with --output"
        )


def _get(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


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
    from rcnn.engine import distributed as du
    from rcnn.engine import runner

    start = time.perf_counter()
    cfg, state = resolve_config(args)
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
    from rcnn.engine import runner

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
    import torch.multiprocessing as mp

    from rcnn.engine import distributed as du

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
    from rcnn.engine import distributed as du
    from rcnn.engine import runner

    logging.basicConfig(level=logging.INFO if local_rank == 0 else logging.WARNING)
    state = None
    try:
        if cfg.resume:
            from rcnn.engine.checkpoint import load_checkpoint

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
