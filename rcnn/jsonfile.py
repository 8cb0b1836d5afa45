"""Reading a json file a user points at, with one-line errors naming the file."""

from __future__ import annotations

import json
import os
from typing import Any

from rcnn.errors import UserError


def load_json_file(path: str | os.PathLike, what: str, error: type[UserError] = UserError) -> Any:
    """The parsed content of ``path``, or ``error``: "<path>: <what> not found" / "not valid JSON".

    Args:
        path: the file.
        what: what the file is, for the message ("annotation file", "results file").
        error: the ``UserError`` subclass to raise (``DatasetError`` for datasets).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise error(f"{path}: {what} not found")
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path}: not valid JSON ({exc})") from exc
