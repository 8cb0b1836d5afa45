"""Every config value states what it accepts, and every preset's values pass the checks."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from rcnn.config import TrainConfig, check_values
from rcnn.errors import UserError
from rcnn.models.config import ModelConfig
from rcnn.zoo import get_preset, list_models

NUMBERS = (int, float)


def _numeric(annotation) -> bool:
    """int / float, or a tuple / list of them (nested), possibly Optional."""
    if annotation in NUMBERS:
        return True
    args = [a for a in typing.get_args(annotation) if a not in (type(None), Ellipsis)]
    return bool(args) and all(_numeric(a) for a in args)


def _fields(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    for spec in dataclasses.fields(cls):
        annotation = hints[spec.name]
        if dataclasses.is_dataclass(annotation):
            yield from _fields(annotation, f"{prefix}{spec.name}.")
        else:
            yield f"{prefix}{spec.name}", annotation, spec


def test_every_numeric_value_declares_its_range():
    """A new number in the config fails here until it states its range (``rcnn.config.checked``)."""
    fields = [*_fields(TrainConfig), *_fields(ModelConfig, "model.")]
    missing = [
        key
        for key, annotation, spec in fields
        if _numeric(annotation) and "accepts" not in spec.metadata
    ]
    assert missing == []
    assert len([f for f in fields if "accepts" in f[2].metadata]) > 70


@pytest.mark.parametrize("name", list_models())
def test_every_preset_passes_the_checks(name):
    check_values(get_preset(name).model)


def test_check_values_names_the_first_bad_value():
    cfg = TrainConfig(model=ModelConfig())
    cfg.model.anchors.sizes = ((32,), (0,))
    with pytest.raises(UserError, match=r"^config: model.anchors.sizes=\[\(32,\), \(0,\)\] is out"):
        cfg.validate()
    cfg = TrainConfig(model=ModelConfig())
    cfg.model.box_head.score_thresh = float("inf")
    with pytest.raises(UserError, match=r"model.box_head.score_thresh=inf must be a finite number"):
        cfg.validate()
