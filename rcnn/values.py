"""Declared value ranges of config fields and their check (``rcnn.config``, ``rcnn.models.config``).

Every number and every closed set of strings declares what it accepts next to its field
(``checked``), and one function (``check_values``) enforces it for the whole tree, so a new option
inherits the check by declaring its range. A module of its own (imported by both config modules)
so that ``rcnn.config`` can type ``TrainConfig.model`` with ``rcnn.models.config.ModelConfig``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import field
from typing import Any

from rcnn.errors import UserError

_INTERVAL = re.compile(r"^\s*([\[(])\s*([^,\s]+)\s*,\s*([^,\s]+)\s*([\])])\s*$")


def checked(
    default: Any,
    accepts: str | tuple[str, ...],
    *,
    nonempty: bool = False,
    special: tuple = (),
) -> Any:
    """A dataclass field whose value (each item, for a list or tuple) must lie in ``accepts``:
    an interval such as ``"(0, 1]"`` or ``"[1, inf)"``, or a tuple of the allowed strings;
    ``nonempty``: a list or tuple that needs at least one item; ``special``: values accepted
    besides (e.g. ``-1`` for "all")."""
    if isinstance(accepts, str):
        _parse_range(accepts)  # a typo in a declaration fails at import, not at a user's run
    metadata = {"accepts": accepts, "nonempty": nonempty, "special": special}
    return field(default=default, metadata=metadata)


def _parse_range(text: str) -> tuple[bool, float, float, bool]:
    match = _INTERVAL.match(text)
    if match is None:
        raise ValueError(f"not an interval: {text!r} (e.g. '(0, 1]', '[1, inf)')")
    left, low, high, right = match.groups()
    return left == "[", float(low), float(high), right == "]"


def _in_range(value: float, accepts: str) -> bool:
    closed_low, low, high, closed_high = _parse_range(accepts)
    above = value >= low if closed_low else value > low
    below = value <= high if closed_high else value < high
    return above and below


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return [leaf for item in value for leaf in _leaves(item)]
    return [value]


def check_values(obj: Any, prefix: str = "") -> None:
    """Check every field of dataclass ``obj`` (and of the dataclasses inside it) against its
    declared range or choices; floats must be finite everywhere.

    Raises:
        UserError: ``config: <dotted key>=<value> is out of range <interval>`` (or not one of the
            choices, or not finite), naming the first bad value.
    """
    for spec in dataclasses.fields(obj):
        value, key = getattr(obj, spec.name), f"{prefix}{spec.name}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_values(value, prefix=f"{key}.")
            continue
        accepts = spec.metadata.get("accepts")
        if spec.metadata.get("nonempty") and not _leaves(value):
            raise UserError(f"config: {key}={_shown(value)} needs at least one value")
        for leaf in _leaves(value):
            if isinstance(leaf, float) and not math.isfinite(leaf):
                raise UserError(f"config: {key}={_shown(value)} must be a finite number")
            if accepts is None or leaf in spec.metadata.get("special", ()):
                continue
            if isinstance(accepts, tuple) and leaf not in accepts:
                choices = ", ".join(repr(c) for c in accepts)
                raise UserError(f"config: {key}={_shown(value)} must be one of {choices}")
            if isinstance(accepts, str) and not _in_range(leaf, accepts):
                also = "".join(f" or {v}" for v in spec.metadata.get("special", ()))
                raise UserError(f"config: {key}={_shown(value)} is out of range {accepts}{also}")


def _shown(value: Any) -> str:
    return str(list(value)) if isinstance(value, tuple) else str(value)
