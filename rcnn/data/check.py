"""``rcnn check``: validate a dataset (any format ``rcnn.data.detect`` reads) and report every
problem with its file and id.

The annotations are parsed by the same readers training uses (so every repair or drop they make is
listed), then every image is decoded to find missing, truncated or unreadable files, EXIF
rotations, non-RGB modes and sizes that disagree with the annotations.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from typing import Any

from rcnn.data.coco import load_coco
from rcnn.data.dataset import DetectionDataset
from rcnn.data.detect import detect_layout, read_layout
from rcnn.data.images import UnreadableImageError, load_image
from rcnn.data.records import ParsedDataset, Problem, is_empty
from rcnn.errors import DatasetError


def parse_for_check(
    *,
    coco: str | None = None,
    images: str | None = None,
    voc: str | None = None,
    dataset: str | None = None,
    options: dict[str, Any] | None = None,
) -> ParsedDataset:
    """Every image of a dataset, read as ``rcnn train --dataset`` reads it (``rcnn.data.detect``):
    ``dataset`` (any layout), a COCO json (``coco``) or a VOC folder / VOCdevkit (``voc``);
    ``images`` is the image folder of any of them. ``options``: ``annotations``, ``format``,
    ``classes``, ``class_map`` (see ``build_dataset``)."""
    if sum(x is not None for x in (coco, voc, dataset)) != 1:
        raise DatasetError("give exactly one of --dataset PATH, --coco ANN.json or --voc ROOT")
    options = dict(options or {})
    if coco is not None:
        return load_coco(coco, image_dir=images, skip_empty=False, exact_areas=True)
    path = voc if voc is not None else dataset
    fmt = "voc" if voc is not None else options.pop("format", None)
    layout = detect_layout(
        path, images=images, annotations=options.pop("annotations", None), format=fmt
    )
    return read_layout(layout, None, skip_empty=False, options={**options, "exact_areas": True})


def _zero_ids(parsed: ParsedDataset) -> list[Problem]:
    """Ids of 0, which the COCO API treats as "unmatched" (evaluation renumbers them)."""
    if parsed.metric != "coco":
        return []
    found = []
    for record in parsed.records:
        if record.image_id == 0:
            found.append(Problem(record.image_path, None, "zero_id", "image id 0: renumbered"))
        if 0 in record.annotation_ids:
            found.append(Problem(parsed.source, 0, "zero_id", "annotation id 0: renumbered"))
    return found


def image_problems(parsed: ParsedDataset) -> tuple[list[Problem], int]:
    """Decode every image; returns its problems and the number of unreadable images."""
    problems: list[Problem] = []
    unreadable = 0
    missing = set(parsed.missing_images)
    resized = {p.file for p in parsed.problems if p.kind == "size_mismatch"}  # reported once
    for record in parsed.records:
        path = record.image_path
        if path in missing:
            continue
        expected = (record.height, record.width)
        try:
            image, info = load_image(path, expected)
        except UnreadableImageError as error:
            unreadable += 1
            message = f"{error}: skipped by the loader".split(": ", 1)[-1]
            problems.append(Problem(path, None, "unreadable_image", message))
            continue
        for note in info.notes:
            kind = "exif" if "EXIF" in note else "converted_to_rgb"
            problems.append(Problem(path, None, kind, note))
        actual = tuple(image.shape[1:])
        if actual != expected and path not in resized:
            message = (
                f"image is {actual[1]}x{actual[0]}, annotations say {expected[1]}x{expected[0]}"
            )
            problems.append(Problem(path, None, "size_mismatch", message + ": boxes rescaled"))
    return problems, unreadable


def _trainable(parsed: ParsedDataset, pixel_problems: list[Problem]) -> int:
    """Images that are readable and hold an object that is not ignored (what training uses)."""
    bad = {p.file for p in pixel_problems if p.kind == "unreadable_image"}
    bad |= set(parsed.missing_images)
    return sum(r.image_path not in bad and not is_empty(r) for r in parsed.records)


def _reason(
    parsed: ParsedDataset, unreadable: int, instances: int, trainable: int | None
) -> str | None:
    if not parsed.records:
        return "no images in the dataset"
    if parsed.missing_images:
        count = len(parsed.missing_images)
        return f"{count} image file(s) missing, first: {parsed.missing_images[0]}"
    if unreadable == len(parsed.records):
        return "no readable image"
    if instances == 0:
        return "no object to train on (every instance dropped or ignored)"
    if trainable == 0:
        return f"every image with an object is unreadable ({unreadable} unreadable image(s))"
    return None


def build_report(parsed: ParsedDataset, *, read_pixels: bool = True) -> dict[str, Any]:
    """The check report: counts, per-class instances, every problem, and whether it is usable."""
    pixel_problems, unreadable = image_problems(parsed) if read_pixels else ([], 0)
    problems = parsed.problems + _zero_ids(parsed) + pixel_problems
    classes = Counter({name: 0 for name in parsed.class_names})
    ignored = 0
    for record in parsed.records:
        ignored += int(record.ignore.sum())
        for label in record.labels[~record.ignore]:
            classes[parsed.class_names[int(label)]] += 1
    instances = sum(classes.values())
    trainable = _trainable(parsed, pixel_problems) if read_pixels else None
    reason = _reason(parsed, unreadable, instances, trainable)
    return {
        "source": parsed.source,
        "format": parsed.metric,
        "images": len(parsed.records),
        "unreadable_images": unreadable,
        "trainable_images": trainable,
        "instances": instances,
        "ignored": ignored,
        "empty_images": sum(is_empty(r) for r in parsed.records),
        "small_dropped": parsed.num_small,
        "has_masks": parsed.has_masks,
        "classes": dict(classes),
        "problems": [problem.as_dict() for problem in problems],
        "problems_by_kind": dict(Counter(problem.kind for problem in problems)),
        "usable": reason is None,
        "reason": reason,
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as text: one line per problem, then the summary."""
    lines = []
    for problem in report["problems"]:
        where = problem["file"]
        if problem["annotation"] is not None:
            where += f" [annotation {problem['annotation']}]"
        lines.append(f"{where}: {problem['kind']}: {problem['problem']}")
    lines += [
        "",
        f"dataset: {report['source']} ({report['format']}, masks: {report['has_masks']})",
        f"images: {report['images']} ({report['unreadable_images']} unreadable, "
        f"{report['empty_images']} with no object)",
        f"instances: {report['instances']} (+ {report['ignored']} ignored crowd/difficult)",
        "per class: " + ", ".join(f"{k}={v}" for k, v in report["classes"].items()),
    ]
    kinds = report["problems_by_kind"]
    lines.append("problems: " + (", ".join(f"{k}={v}" for k, v in sorted(kinds.items())) or "none"))
    lines.append("usable: yes" if report["usable"] else f"usable: no ({report['reason']})")
    return "\n".join(lines)


def save_pictures(
    parsed: ParsedDataset, count: int, out_dir: str, *, draw: Callable[..., Any]
) -> list[str]:
    """Draw the ground truth of the first ``count`` readable images into ``out_dir`` as PNGs.

    ``draw(image, targets, class_names) -> PIL.Image`` (``rcnn.visualize.draw_instances``; the
    data layer does not import the picture code).
    """
    os.makedirs(out_dir, exist_ok=True)
    readable = [r for r in parsed.records if os.path.isfile(r.image_path)]
    dataset = DetectionDataset(
        ParsedDataset(parsed.source, readable, parsed.class_names, [], parsed.metric, False)
    )
    dataset.has_masks = parsed.has_masks
    written: list[str] = []
    for index in range(len(dataset)):
        if len(written) >= count:
            break
        sample = dataset.load(index)
        if sample is None:
            continue
        stem = os.path.splitext(os.path.basename(dataset.records[index].image_path))[0]
        path = os.path.join(out_dir, f"{len(written):04d}_{stem}.png")
        draw(*sample, parsed.class_names).save(path)
        written.append(path)
    return written
