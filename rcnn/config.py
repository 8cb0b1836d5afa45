"""Training configuration: one dataclass, yaml files, ``--set a.b=value`` overrides, yaml dumps.

The resolution order of ``rcnn train`` is: ``TrainConfig`` defaults → the preset's published
recipe (``rcnn.zoo.get_preset(name).recipe``) → a config file → explicit command-line flags →
``--set`` overrides. ``TrainConfig.model`` holds the preset's ``rcnn.models.config.ModelConfig``;
any field of it is reachable as ``--set model.<field>.<subfield>=value``.

Overrides are type-checked against the dataclass annotations: ``--set lr=abc`` and
``--set batch_size=2.5`` are errors, ``--set lr_decay_epoch=8,11`` and
``--set lr_decay_epoch=[8,11]`` both give ``[8.0, 11.0]``, ``--lr 1e-3`` is a float (YAML 1.1
reads it as a string; ``_scientific``), and an unknown key is rejected with the valid keys listed.

Values are range-checked in one place: each field declares what it accepts next to it
(``checked(default, "(0, 1]")`` or a tuple of choices; ``rcnn.models.config`` does the same), and
``check_values`` (called by ``TrainConfig.validate``, which the config resolution calls last)
checks the whole tree; floats must be finite everywhere. A new option inherits the check by
declaring its range.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from rcnn.errors import UserError
from rcnn.fileio import write_text
from rcnn.models.config import ModelConfig
from rcnn.values import check_values, checked

__all__ = ["TrainConfig", "check_values", "checked"]  # the value checks: rcnn/values.py

# Keys that may differ between a run and its ``--resume``: they change neither the model nor the
# optimisation trajectory (``epochs``/``max_iters`` only extend or shorten it).
RESUMABLE_KEYS = frozenset(
    {
        "output",
        "resume",
        "num_workers",
        "log_interval",
        "save_interval",
        "val_interval",
        "epochs",
        "max_iters",
        "early_stop_patience",
        "early_stop_min_delta",
        "vis_images",
        "gpus",
    }
)


@dataclass
class TrainConfig:
    """Everything ``rcnn train`` needs; field names follow GluonCV's training scripts.

    Intervals (``save_interval``, ``val_interval``) are strings: ``"2"`` or ``"2ep"`` means every
    2 epochs (GluonCV's unit), ``"500it"`` every 500 iterations, ``"0"`` never (the end of training
    always saves and validates). One iteration is one optimizer step of ``batch_size`` images
    (summed over processes and accumulation steps). ``dataset_options`` go to
    ``rcnn.data.build_dataset`` (``min_object_area``; shapes: ``num_train``, ``num_val``,
    ``image_size``, ``seed``); set one with ``--set dataset_options.num_train=50``. ``fast``
    trains with ``rcnn.models.fast.optimize`` (frozen BN folded into its conv, channels-last):
    faster, the same checkpoints, results within float rounding of the default model.
    ``val_max_images`` > 0 validates on the first that many val images (0: all of them).
    Augmentation (``rcnn.data.augment.TrainTransform``): ``flip_prob``, ``color_jitter``
    (brightness/contrast/saturation strength, 0: off), ``scale_jitter`` (``[lo, hi]`` large-scale
    jitter factors with a random crop, empty: off).
    """

    network: str = "mask_rcnn_shapes"
    dataset: str = "shapes"
    data_root: str | None = None
    output: str | None = None
    resume: str | None = None
    weights: str = ""  # initial weights: an rcnn checkpoint (e.g. written by rcnn convert)
    gpus: str = ""
    batch_size: int = checked(2, "[1, inf)")
    epochs: float = checked(12.0, "[0, inf)")
    max_iters: int = checked(0, "[0, inf)")
    lr: float = checked(0.01, "(0, inf)")
    lr_decay: float = checked(0.1, "(0, 1]")
    lr_decay_epoch: list[float] = field(
        default_factory=lambda: [8.0, 11.0], metadata={"accepts": "[0, inf)"}
    )
    lr_warmup: int = checked(500, "[0, inf)")
    lr_warmup_factor: float = checked(1.0 / 3.0, "(0, 1]")
    lr_schedule: str = checked("step", ("step", "cosine"))
    wd: float = checked(1e-4, "[0, inf)")
    wd_bias_norm: bool = True
    momentum: float = checked(0.9, "[0, 1)")
    clip_grad: float = checked(0.0, "[0, inf)")  # 0 = off
    accumulate: int = checked(1, "[1, inf)")
    amp: str = checked("off", ("off", "auto", "bf16", "fp16"))
    sync_bn: bool = False
    find_unused_parameters: bool = False
    num_workers: int = checked(2, "[0, inf)")
    seed: int = checked(233, "[0, inf)")
    deterministic: bool = False
    fast: bool = False
    save_interval: str = "1"
    val_interval: str = "1"
    log_interval: int = checked(20, "[1, inf)")
    val_loss_batches: int = checked(20, "[0, inf)")
    val_max_images: int = checked(0, "[0, inf)")  # 0 = every val image
    early_stop_patience: int = checked(0, "[0, inf)")
    early_stop_min_delta: float = checked(0.001, "[0, inf)")
    vis_images: int = checked(4, "[0, inf)")
    flip_prob: float = checked(0.5, "[0, 1]")
    color_jitter: float = checked(0.0, "[0, 1)")  # 0 = off
    # [lo, hi] large-scale jitter factors; empty = off (two values checked in ``validate``)
    scale_jitter: list[float] = field(default_factory=list, metadata={"accepts": "(0, inf)"})
    dataset_options: dict[str, Any] = field(default_factory=dict)
    model: ModelConfig = field(default_factory=ModelConfig)

    def validate(self) -> None:
        """Raise ``UserError`` naming the first value that cannot work: every field's declared
        range or choices (``check_values``, the model config included), then the intervals and
        what involves two fields."""
        check_values(self)
        if self.epochs <= 0 and self.max_iters <= 0:
            raise UserError("config: epochs or max_iters must be > 0")
        jitter = self.scale_jitter
        if jitter and (len(jitter) != 2 or jitter[0] > jitter[1]):
            raise UserError(
                f"config: scale_jitter={list(jitter)} must be empty (off) or two factors "
                "0 < lo <= hi, e.g. 0.5,1.5"
            )
        parse_interval(self.save_interval, "save_interval")
        parse_interval(self.val_interval, "val_interval")


BUILTIN_DATASETS = ("shapes", "coco", "voc")


def absolute_paths(cfg: TrainConfig, saved: dict[str, Any] | None = None) -> None:
    """Make ``dataset`` (a path that exists, not a built-in name) and ``data_root`` (where shapes
    may be generated yet) absolute, in ``cfg`` and in a resumed checkpoint's ``saved`` config
    dict, so that a run started with a relative path resumes from any folder and compares equal
    to its checkpoint."""
    for tree in ([saved] if saved else []) + [None]:
        for key in ("dataset", "data_root"):
            value = tree.get(key) if tree is not None else getattr(cfg, key)
            if not value or (key == "dataset" and value in BUILTIN_DATASETS):
                continue
            path = os.path.expanduser(str(value))
            if key == "dataset" and not os.path.exists(path):
                continue  # reported as missing, as the user typed it
            if tree is not None:
                tree[key] = os.path.abspath(path)
            else:
                setattr(cfg, key, os.path.abspath(path))


def parse_interval(text: str, name: str = "interval") -> tuple[float, str]:
    """Parse ``"2"``/``"2ep"`` (epochs) or ``"500it"`` (iterations) into ``(amount, unit)``."""
    value = str(text).strip().lower()
    unit = "it" if value.endswith("it") else "ep"
    number = value.removesuffix("it").removesuffix("ep")
    try:
        amount = float(number)
    except ValueError:
        raise UserError(
            f"config: {name}={text!r} is not an interval (use e.g. '2' or '2ep' for epochs, "
            "'500it' for iterations)"
        ) from None
    if amount < 0 or (unit == "it" and amount != int(amount)):
        raise UserError(f"config: {name}={text!r} must be a non-negative (whole for 'it') number")
    return amount, unit


def interval_iters(text: str, iters_per_epoch: int, name: str = "interval") -> int:
    """An interval in iterations (0 = never)."""
    amount, unit = parse_interval(text, name)
    if amount == 0:
        return 0
    return max(1, int(amount) if unit == "it" else round(amount * iters_per_epoch))


# ---------------------------------------------------------------------------------------------
# dataclass trees <-> dicts, with type checking


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _field_type(obj: Any, name: str) -> Any:
    return _hints(type(obj))[name]


def coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert ``value`` (parsed yaml or a raw string) to ``annotation`` or raise ``UserError``."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return value
    if origin in (Union, types.UnionType):
        options = typing.get_args(annotation)
        is_none = value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
        if is_none and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return coerce(value, option, key)
            except UserError as error:
                errors.append(str(error))
        raise UserError(errors[0] if errors else f"config: {key}: cannot be None")
    if origin in (list, tuple):
        return _coerce_sequence(value, annotation, key)
    if origin is dict or annotation is dict:
        value = yaml.safe_load(value) if isinstance(value, str) else value
        if not isinstance(value, dict):
            raise UserError(f"config: {key} expects a mapping like {{a: 1}}, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(annotation):
        if value is None:
            return None
        if not isinstance(value, dict):
            raise UserError(f"config: {key} expects a mapping, got {value!r}")
        return from_dict(annotation, value, prefix=f"{key}.")
    return _coerce_scalar(value, annotation, key)


def _coerce_sequence(value: Any, annotation: Any, key: str) -> Any:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if isinstance(value, str):
        text = value.strip()
        if text[:1] in "[(" and text:  # yaml flow lists; tuples written with parentheses too
            value = _parse_yaml(text.replace("(", "[").replace(")", "]"), key)
        else:
            value = [yaml.safe_load(part) for part in text.split(",") if part.strip()]
    if not isinstance(value, (list, tuple)):
        value = [value]
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            raise UserError(f"config: {key} expects {len(args)} values, got {list(value)}")
        return tuple(
            coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    item = args[0] if args else Any
    items = [coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    return tuple(items) if origin is tuple else items


def _parse_yaml(text: Any, key: str) -> Any:
    if not isinstance(text, str) or not text.strip():
        return text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise UserError(f"config: {key}: cannot parse {text!r}") from None


def _coerce_scalar(value: Any, annotation: Any, key: str) -> Any:
    if isinstance(value, str) and annotation is not str:
        value = yaml.safe_load(value) if value.strip() else value
    ok = False
    if annotation is bool:
        ok = isinstance(value, bool)
    elif annotation is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif annotation is float:
        value = _scientific(value)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif annotation is str:
        ok = value is not None and not isinstance(value, (list, dict))
        value = str(value) if ok else value
    else:
        ok = isinstance(value, annotation)
    if not ok:
        name = getattr(annotation, "__name__", str(annotation))
        raise UserError(f"config: {key} expects {name}, got {value!r}")
    return value


def _scientific(value: Any) -> Any:
    """``"1e-3"`` as a float: YAML 1.1 (PyYAML) reads exponents without a dot as strings."""
    if isinstance(value, str):
        try:
            return float(value.strip()) if _FLOAT.match(value) else value
        except ValueError:
            return value
    return value


_FLOAT = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$")


def from_dict(cls: type, data: dict[str, Any], *, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a (possibly partial) nested dict, checking keys and types."""
    obj = cls()
    apply_dict(obj, data, prefix=prefix)
    return obj


def apply_dict(obj: Any, data: dict[str, Any], *, prefix: str = "", text: bool = False) -> None:
    """Set the fields of dataclass ``obj`` from ``data`` in place (nested dicts recurse).

    Nested dataclasses and free-form dict fields (``dataset_options``) are updated key by key; a
    value that is not a dict replaces the field. ``text=True``: string leaves are command-line
    text (``--set``), so free-form entries are parsed as yaml (typed fields always are).
    """
    for key, value in data.items():
        _check_key(obj, key, prefix)
        annotation = _field_type(obj, key)
        current = getattr(obj, key)
        if not isinstance(value, dict):
            setattr(obj, key, coerce(value, annotation, f"{prefix}{key}"))
        elif dataclasses.is_dataclass(current) or dataclasses.is_dataclass(annotation):
            if current is None:
                current = annotation()
            apply_dict(current, value, prefix=f"{prefix}{key}.", text=text)
            setattr(obj, key, current)
        elif isinstance(current, dict):
            parse = text and _is_free_form(annotation)
            where = f"{prefix}{key}."
            current.update({k: _parse_yaml(v, where + k) if parse else v for k, v in value.items()})
        else:
            raise UserError(f"config: '{prefix}{key}' has no sub-keys (set '{prefix}{key}')")


def _is_free_form(annotation: Any) -> bool:
    """A ``dict[str, Any]`` field: its entries are not typed, so command-line text is parsed."""
    args = typing.get_args(annotation)
    return not args or args[-1] is Any


def nest_dotted(data: dict[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1, "a": {"c": 2}}`` -> ``{"a": {"b": 1, "c": 2}}`` (for ``apply_dict``)."""
    nested: dict[str, Any] = {}
    for key, value in data.items():
        *parents, leaf = key.split(".")
        node = nested
        for name in parents:
            node = node.setdefault(name, {})
        if isinstance(value, dict) and isinstance(node.get(leaf), dict):
            node[leaf].update(nest_dotted(value))
        else:
            node[leaf] = nest_dotted(value) if isinstance(value, dict) else value
    return nested


def _check_key(obj: Any, key: str, prefix: str) -> None:
    names = [f.name for f in dataclasses.fields(obj)]
    if key not in names:
        raise UserError(
            f"config: unknown key '{prefix}{key}'; valid keys: "
            + ", ".join(prefix + name for name in names)
        )


def parse_override(item: str) -> dict[str, Any]:
    """``"a.b=value"`` -> ``{"a": {"b": "value"}}`` (the value stays text; ``apply_dict`` with
    ``text=True`` types it). The one parser of ``--set`` items."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {item!r}: expected key=value (e.g. --set lr=0.02)")
    return nest_dotted({key.strip(): raw})


def apply_overrides(cfg: Any, overrides: Iterable[str]) -> None:
    """Apply ``["a.b=value", ...]`` to ``cfg`` in place, in order (parsed, type-checked)."""
    for item in overrides:
        apply_dict(cfg, parse_override(item), text=True)


def to_dict(obj: Any) -> Any:
    """A plain nested dict/list tree of a dataclass (tuples become lists): yaml, checkpoints."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a config file (a mapping of TrainConfig keys; ``model:`` nested)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise UserError(f"config file {path}: not valid yaml ({error})") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path}: expected a mapping of config keys")
    return data


def dump_yaml(cfg: TrainConfig, path: str | Path | None = None) -> str:
    """The resolved config as yaml text (written to ``path`` when given)."""
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    if path is not None:
        write_text(path, text)
    return text


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Inverse of ``to_dict`` for a whole TrainConfig (as stored in config.yaml or a checkpoint)."""
    return from_dict(TrainConfig, data)


def config_diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two ``to_dict`` trees."""
    keys = sorted(set(old) | set(new))
    diffs = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += config_diff(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key}")
    return diffs
