"""Training configuration: one dataclass, yaml files, ``--set a.b=value`` overrides, yaml dumps.

The resolution order of ``rcnn train`` is: ``TrainConfig`` defaults → the preset's published
recipe (``rcnn.zoo.get_preset(name).recipe``) → a config file → explicit command-line flags →
``--set`` overrides. ``TrainConfig.model`` holds the preset's ``rcnn.models.config.ModelConfig``;
any field of it is reachable as ``--set model.<field>.<subfield>=value``.

Overrides are type-checked against the dataclass annotations: ``--set lr=abc`` and
``--set batch_size=2.5`` are errors, ``--set lr_decay_epoch=8,11`` and
``--set lr_decay_epoch=[8,11]`` both give ``[8.0, 11.0]``, and an unknown key is rejected with the
valid keys listed.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from rcnn.errors import UserError

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
    gpus: str = ""
    batch_size: int = 2
    epochs: float = 12.0
    max_iters: int = 0
    lr: float = 0.01
    lr_decay: float = 0.1
    lr_decay_epoch: list[float] = field(default_factory=lambda: [8.0, 11.0])
    lr_warmup: int = 500
    lr_warmup_factor: float = 1.0 / 3.0
    lr_schedule: str = "step"
    wd: float = 1e-4
    wd_bias_norm: bool = True
    momentum: float = 0.9
    clip_grad: float = 0.0
    accumulate: int = 1
    amp: str = "off"
    sync_bn: bool = False
    find_unused_parameters: bool = False
    num_workers: int = 2
    seed: int = 233
    deterministic: bool = False
    fast: bool = False
    save_interval: str = "1"
    val_interval: str = "1"
    log_interval: int = 20
    val_loss_batches: int = 20
    val_max_images: int = 0
    early_stop_patience: int = 0
    early_stop_min_delta: float = 0.001
    vis_images: int = 4
    flip_prob: float = 0.5
    color_jitter: float = 0.0
    scale_jitter: list[float] = field(default_factory=list)
    dataset_options: dict[str, Any] = field(default_factory=dict)
    model: Any = None

    def validate(self) -> None:
        """Raise ``UserError`` naming the first field whose value cannot work."""
        checks = [
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.epochs > 0 or self.max_iters > 0, "epochs or max_iters must be > 0"),
            (self.max_iters >= 0, "max_iters must be >= 0"),
            (self.lr > 0, "lr must be > 0"),
            (0 < self.lr_warmup_factor <= 1, "lr_warmup_factor must be in (0, 1]"),
            (self.lr_schedule in ("step", "cosine"), "lr_schedule must be 'step' or 'cosine'"),
            (self.accumulate >= 1, "accumulate must be >= 1"),
            (self.amp in ("off", "auto", "bf16", "fp16"), "amp must be off, auto, bf16 or fp16"),
            (self.num_workers >= 0, "num_workers must be >= 0"),
            (self.log_interval >= 1, "log_interval must be >= 1"),
            (self.clip_grad >= 0, "clip_grad must be >= 0 (0 = off)"),
            (self.val_max_images >= 0, "val_max_images must be >= 0 (0 = every val image)"),
            (0 <= self.flip_prob <= 1, "flip_prob must be in [0, 1]"),
            (0 <= self.color_jitter < 1, "color_jitter must be in [0, 1) (0 = off)"),
            (
                not self.scale_jitter
                or (
                    len(self.scale_jitter) == 2 and 0 < self.scale_jitter[0] <= self.scale_jitter[1]
                ),
                "scale_jitter must be empty (off) or two factors 0 < lo <= hi, e.g. 0.5,1.5",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(f"config: {message}")
        parse_interval(self.save_interval, "save_interval")
        parse_interval(self.val_interval, "val_interval")


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


def _model_config_class() -> type:
    from rcnn.models.config import ModelConfig

    return ModelConfig


def _field_type(obj: Any, name: str) -> Any:
    if isinstance(obj, TrainConfig) and name == "model":
        return _model_config_class()
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


def _parse_yaml(text: str, key: str) -> Any:
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


def from_dict(cls: type, data: dict[str, Any], *, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a (possibly partial) nested dict, checking keys and types."""
    obj = cls()
    apply_dict(obj, data, prefix=prefix)
    return obj


def apply_dict(obj: Any, data: dict[str, Any], *, prefix: str = "") -> None:
    """Set the fields of dataclass ``obj`` from ``data`` in place (nested dicts recurse)."""
    for key, value in data.items():
        _check_key(obj, key, prefix)
        annotation = _field_type(obj, key)
        current = getattr(obj, key)
        if isinstance(value, dict) and (
            dataclasses.is_dataclass(current) or dataclasses.is_dataclass(annotation)
        ):
            if current is None:
                current = annotation()
            apply_dict(current, value, prefix=f"{prefix}{key}.")
            setattr(obj, key, current)
        else:
            setattr(obj, key, coerce(value, annotation, f"{prefix}{key}"))


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


def apply_overrides(cfg: TrainConfig, overrides: list[str]) -> None:
    """Apply ``["a.b=value", ...]`` to ``cfg`` in place (values parsed as yaml, type-checked)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r}: expected key=value (e.g. --set lr=0.02)")
        *parents, leaf = key.strip().split(".")
        obj, prefix = cfg, ""
        for depth, name in enumerate(parents):
            _check_key(obj, name, prefix)
            child = getattr(obj, name)
            if isinstance(child, dict) and depth == len(parents) - 1:
                child[leaf] = yaml.safe_load(raw) if raw.strip() else raw  # free-form options
                break
            if not dataclasses.is_dataclass(child):
                raise UserError(f"config: '{prefix}{name}' has no sub-keys (set '{key}')")
            obj, prefix = child, f"{prefix}{name}."
        else:
            _check_key(obj, leaf, prefix)
            setattr(obj, leaf, coerce(raw, _field_type(obj, leaf), key.strip()))


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
        Path(path).write_text(text)
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
