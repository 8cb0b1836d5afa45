"""The options every command that reads a dataset shares: where the images and annotations are,
which format, the hold-out split and whether empty images are kept (``rcnn.data.build_dataset``'s
``**options``). ``rcnn train`` takes the same flags as ``dataset_options`` config keys."""

from __future__ import annotations

import argparse
from typing import Any

from rcnn.data.detect import FORMATS

# (flag, option, help); the values go to build_dataset(**options) / dataset_options.
DATA_FLAGS = [
    ("--images", "images", "image folder, when it is not found by file name"),
    ("--annotations", "annotations", "annotation file or folder, when not found by content"),
    ("--format", "format", f"dataset format, skipping detection: {' | '.join(FORMATS)}"),
    ("--val-fraction", "val_fraction", "share of a single annotation set held out for val (0.15)"),
    ("--split-seed", "split_seed", "draw the hold-out with this seed (default: the last images)"),
    ("--class-map", "class_map", "PNG masks: json/yaml file mapping instance values to classes"),
]
KEEP_EMPTY_HELP = "keep images without objects in training (as negatives)"
TYPES = {"val_fraction": float, "split_seed": int}


def add_data_arguments(group: argparse._ActionsContainer, *, images: bool = True) -> None:
    """The ``DATA_FLAGS`` and ``--keep-empty`` (``images=False``: the caller defines --images)."""
    for flag, option, help_text in DATA_FLAGS:
        if flag == "--images" and not images:
            continue
        group.add_argument(
            flag, dest=option, type=TYPES.get(option, str), default=None, help=help_text,
            metavar=option.upper(), **({"choices": FORMATS} if option == "format" else {}),
        )  # fmt: skip
    group.add_argument("--keep-empty", action="store_true", help=KEEP_EMPTY_HELP)


def data_options(args: argparse.Namespace) -> dict[str, Any]:
    """The dataset options the user gave (``build_dataset``'s keyword arguments)."""
    options = {
        option: getattr(args, option)
        for _, option, _ in DATA_FLAGS
        if getattr(args, option, None) is not None
    }
    if getattr(args, "keep_empty", False):
        options["keep_empty"] = True
    return options
