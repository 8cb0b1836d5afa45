"""``rcnn check``: validate a dataset before training and report every problem.

Exit codes: 0 when the dataset is usable (problems that are repaired or skipped are listed), 1 when
it is not (a one-line reason on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys

from rcnn.cli.data_options import add_data_arguments, data_options
from rcnn.data.check import build_report, format_report, parse_for_check, save_pictures
from rcnn.data.records import outside_root_allowed
from rcnn.errors import DatasetError
from rcnn.visualize import draw_instances


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--dataset", metavar="PATH", help="any dataset `rcnn train --dataset` reads (detected)"
    )
    source.add_argument("--coco", metavar="ANN.json", help="a COCO instances json")
    source.add_argument("--voc", metavar="ROOT", help="a VOC folder (xml + images) or VOCdevkit")
    parser.add_argument(
        "--images", metavar="DIR", help="image folder (default: found by file name)"
    )
    add_data_arguments(parser, images=False)
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.add_argument(
        "--allow-outside-root",
        action="store_true",
        help="follow image paths that leave the dataset folder (../x.jpg, /abs/x.jpg)",
    )
    parser.add_argument(
        "--show", type=int, default=0, metavar="N", help="save N images with their ground truth"
    )
    parser.add_argument("--out", metavar="DIR", default="check_pictures", help="where --show saves")


def run(args: argparse.Namespace) -> int:
    try:
        options = data_options(args)
        with outside_root_allowed(args.allow_outside_root):
            parsed = parse_for_check(
                coco=args.coco, images=options.pop("images", None), voc=args.voc,
                dataset=args.dataset, options=options,
            )  # fmt: skip
    except DatasetError as error:
        print(f"rcnn check: unusable: {error}", file=sys.stderr)
        return 1
    report = build_report(parsed)
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    if args.show > 0:
        written = save_pictures(parsed, args.show, args.out, draw=draw_instances)
        print(f"saved {len(written)} picture(s) to {args.out}", file=sys.stderr)
    if not report["usable"]:
        print(f"rcnn check: unusable: {report['reason']}", file=sys.stderr)
        return 1
    return 0
