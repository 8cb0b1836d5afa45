"""One training config from its sources: ``resolve_config`` (the CLI, the tests and Python users).

Order (later wins): ``TrainConfig`` defaults -> the preset's published recipe and model
(``rcnn.zoo.get_preset``) -> a config file -> overrides (``rcnn train``'s flags and ``--set``
items, or a mapping of dotted keys). When resuming, the checkpoint's stored config replaces the
defaults and the preset, and only ``RESUMABLE_KEYS`` may then differ from it.

Every value is type-checked against the dataclasses (``rcnn.config``); ``--set`` items are parsed
by ``rcnn.config.parse_override`` alone.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from rcnn.config import (
    RESUMABLE_KEYS,
    TrainConfig,
    absolute_paths,
    apply_dict,
    config_diff,
    config_from_dict,
    load_yaml,
    nest_dotted,
    parse_override,
    to_dict,
)
from rcnn.data.build import DATASET_OPTIONS
from rcnn.errors import UserError
from rcnn.zoo import get_preset

logger = logging.getLogger(__name__)


def resolve_config(
    network: str | None = None,
    *,
    file: str | Path | Mapping[str, Any] | None = None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
    checkpoint: Mapping[str, Any] | None = None,
    resume: str | Path | None = None,
) -> TrainConfig:
    """The resolved, validated ``TrainConfig`` (``UserError`` naming the bad key or value).

    Args:
        network: the preset (``rcnn.list_models()``); default: the overrides' ``network``, else the
            file's, else ``TrainConfig.network``.
        file: a yaml config file, or its mapping (TrainConfig keys; ``model:`` nested).
        overrides: ``["key=value", ...]`` as on the command line (``model.rpn.nms_thresh=0.6``;
            values are text, typed here), or a mapping of dotted keys to values.
        checkpoint: a loaded checkpoint to resume (``rcnn.engine.checkpoint.load_checkpoint``):
            its ``config`` is the base instead of the preset.
        resume: the checkpoint's path (``cfg.resume``; the run folder unless ``output`` is set).

    The learning rate follows the linear scaling rule when the batch size differs from the
    recipe's and no ``lr`` is given (GluonCV: ``lr = 0.00125 * batch_size``).
    """
    file_data = _file_data(file)
    layers = _override_layers(overrides)
    given = {key for layer, _ in layers for key in layer}
    if checkpoint is not None:
        cfg = config_from_dict(dict(checkpoint["config"]))
        file_data = {k: v for k, v in file_data.items() if k != "network"}
    else:
        cfg = from_preset(_network(network, layers, file_data))
    apply_dict(cfg, file_data)
    recipe_batch, recipe_lr = cfg.batch_size, cfg.lr
    recipe_options = dict(cfg.dataset_options)
    for layer, text in layers:
        apply_dict(cfg, layer, text=text)
    saved = checkpoint["config"] if checkpoint is not None else None
    absolute_paths(cfg, saved)  # a run started with relative paths resumes from any folder
    _drop_foreign_options(cfg, recipe_options)
    if checkpoint is None and "lr" not in given and "lr" not in file_data:
        _scale_lr(cfg, recipe_batch, recipe_lr)
    if checkpoint is not None:
        _check_resume_config(saved, cfg, resume)
        if resume is not None:
            cfg.resume = str(resume)
            if "output" not in given:  # the folder resumed, not where the run was first written
                path = Path(resume)
                cfg.output = str(path if path.is_dir() else path.parent)
    cfg.validate()
    return cfg


def from_preset(network: str) -> TrainConfig:
    """``TrainConfig`` defaults with preset ``network``'s recipe and model config."""
    preset = get_preset(network)  # UserError listing the known names
    cfg = TrainConfig(network=network)
    recipe = {k: list(v) if isinstance(v, tuple) else v for k, v in preset.recipe.items()}
    apply_dict(cfg, recipe)
    cfg.model = preset.model
    return cfg


def _file_data(file: str | Path | Mapping[str, Any] | None) -> dict[str, Any]:
    if file is None:
        return {}
    if isinstance(file, Mapping):
        return dict(file)
    return load_yaml(file)


def _override_layers(overrides: Iterable[str] | Mapping[str, Any]) -> list[tuple[dict, bool]]:
    """Nested override dicts, applied in order, each with whether its leaves are text."""
    if isinstance(overrides, Mapping):
        return [(nest_dotted(dict(overrides)), False)] if overrides else []
    if isinstance(overrides, str):
        raise UserError(f"overrides: expected a list of key=value items, got {overrides!r}")
    return [(parse_override(item), True) for item in overrides]


def _network(network: str | None, layers: list[tuple[dict, bool]], file_data: dict) -> str:
    for layer, _ in reversed(layers):
        if "network" in layer:
            return str(layer["network"]).strip()
    return network or file_data.get("network") or TrainConfig.network


def _drop_foreign_options(cfg: TrainConfig, recipe_options: dict) -> None:
    """A recipe's dataset options for another dataset (shapes sizes) do not follow ``dataset``."""
    valid = DATASET_OPTIONS["shapes" if cfg.dataset == "shapes" else "other"]
    for key, value in recipe_options.items():
        if key not in valid and cfg.dataset_options.get(key) == value:
            del cfg.dataset_options[key]


def _scale_lr(cfg: TrainConfig, recipe_batch: int, recipe_lr: float) -> None:
    """Linear scaling rule (GluonCV: ``lr = 0.00125 * batch_size`` unless ``lr`` is given)."""
    if cfg.batch_size != recipe_batch:
        cfg.lr = recipe_lr * cfg.batch_size / recipe_batch
        logger.info(
            "lr %.4g (the recipe's %.4g at batch size %d, scaled to %d)",
            cfg.lr,
            recipe_lr,
            recipe_batch,
            cfg.batch_size,
        )


def _check_resume_config(saved: dict, cfg: TrainConfig, path: str | Path | None) -> None:
    now = to_dict(cfg)
    changed = [k for k in config_diff(saved, now) if k.split(".")[0] not in RESUMABLE_KEYS]
    changed = [k for k in changed if k != "model.classes"]  # checked against the dataset later
    if changed:
        shown = ", ".join(f"{k} ({_get(saved, k)!r} -> {_get(now, k)!r})" for k in changed[:4])
        raise UserError(
            f"--resume {path}: this run's config differs from the checkpoint's: {shown}; resume "
            "with the same settings, or start a new run with --output"
        )


def _get(tree: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree
