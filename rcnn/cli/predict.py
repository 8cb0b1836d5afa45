"""`rcnn predict` (placeholder wiring; its owner replaces this module)."""

from __future__ import annotations

import argparse

from rcnn.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser


def run(args: argparse.Namespace) -> int:
    raise UserError("'rcnn predict' is not built yet")
