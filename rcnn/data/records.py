"""What parsing an annotation file produces: records, class names and the problems found.

Both the dataset (which repairs or skips) and ``rcnn check`` (which reports) use these, so the
report lists exactly what training will do with each problem.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rcnn.structures import InstanceMask, Record

# The fraction of images a single-file dataset holds out for validation (the last ones by image id,
# or by file name for VOC folders). 18 images -> 15 train + 3 val.
HOLDOUT_FRACTION = 0.15


@dataclass
class Problem:
    """One thing wrong with a dataset.

    Attributes:
        file: the annotation or image file concerned.
        annotation: the annotation id (COCO), object index (VOC), None for the whole image.
        kind: a short machine-readable name (``"missing_image"``, ``"box_outside_image"``, ...).
        message: what is wrong and what was done about it.
    """

    file: str
    annotation: int | str | None
    kind: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "annotation": self.annotation,
            "kind": self.kind,
            "problem": self.message,
        }


@dataclass
class Instance:
    """One parsed object before it joins its record."""

    box: np.ndarray
    label: int
    ignore: bool
    mask: InstanceMask | None
    annotation_id: int


@dataclass
class ParsedDataset:
    """The result of reading a dataset's annotation files (no pixels read, except headers).

    Attributes:
        source: the annotation file or folder.
        records: the usable images (after ``skip_empty``).
        class_names: label -> class name.
        label_to_category_id: label -> the source file's category id.
        metric: ``"coco"`` or ``"voc"``.
        has_masks: whether instances carry masks.
        problems: every problem found, in file order.
        num_empty: images with no non-ignored instance (before ``skip_empty``).
        num_skipped_empty: how many of those were left out by ``skip_empty``.
        num_small: instances left out by ``min_object_area``.
        missing_images: image paths that do not exist.
    """

    source: str
    records: list[Record]
    class_names: list[str]
    label_to_category_id: list[int]
    metric: str
    has_masks: bool
    problems: list[Problem] = field(default_factory=list)
    num_empty: int = 0
    num_skipped_empty: int = 0
    num_small: int = 0
    missing_images: list[str] = field(default_factory=list)

    def problem_counts(self) -> Counter:
        return Counter(problem.kind for problem in self.problems)


def is_empty(record: Record) -> bool:
    """True when the record has no instance that is not an ignore region."""
    return not bool((~record.ignore).any()) if len(record) else True


def add_record(parsed: ParsedDataset, record: Record, skip_empty: bool) -> None:
    """Append ``record`` to ``parsed``, counting a missing image file and an empty record."""
    if not os.path.isfile(record.image_path):
        parsed.missing_images.append(record.image_path)
        parsed.problems.append(
            Problem(record.image_path, None, "missing_image", "image file not found")
        )
    if is_empty(record):
        parsed.num_empty += 1
        if skip_empty:
            parsed.num_skipped_empty += 1
            return
    parsed.records.append(record)


def make_record(
    image_path: str,
    image_id: int,
    size: tuple[int, int],
    instances: list[Instance],
    *,
    has_masks: bool,
    file_name: str,
) -> Record:
    """Assemble a ``Record`` from parsed instances of an image of ``size`` ``(H, W)``."""
    boxes = np.array([inst.box for inst in instances], dtype=np.float32).reshape(-1, 4)
    return Record(
        image_path=image_path,
        image_id=int(image_id),
        height=int(size[0]),
        width=int(size[1]),
        boxes=boxes,
        labels=np.array([inst.label for inst in instances], dtype=np.int64),
        ignore=np.array([inst.ignore for inst in instances], dtype=bool),
        masks=[inst.mask for inst in instances] if has_masks else None,
        annotation_ids=[int(inst.annotation_id) for inst in instances],
        file_name=file_name,
    )


def check_box(
    box: Any, size: tuple[int, int], where: tuple[str, Any], problems: list[Problem]
) -> np.ndarray | None:
    """Validate an XYXY box, clip it to an image of ``size`` ``(H, W)``; None when unusable.

    Every repair or drop is appended to ``problems`` as ``Problem(file, annotation, ...)`` with
    ``where = (file, annotation)``.
    """
    try:
        array = np.asarray(box, dtype=np.float64).reshape(4)
    except (TypeError, ValueError):
        problems.append(Problem(*where, "bad_box", f"box {box!r} is not 4 numbers: dropped"))
        return None
    if not np.isfinite(array).all():
        problems.append(Problem(*where, "nan_coordinates", f"box {array.tolist()}: dropped"))
        return None
    if array[2] <= array[0] or array[3] <= array[1]:
        message = f"box {array.tolist()} has zero or negative size: dropped"
        problems.append(Problem(*where, "zero_area_box", message))
        return None
    height, width = size
    limits = (width, height, width, height)
    pairs = zip(array.tolist(), limits, strict=True)
    clipped = np.array([min(max(value, 0.0), limit) for value, limit in pairs])
    if not np.array_equal(clipped, array):
        if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
            message = f"box {array.tolist()} lies outside the {width}x{height} image: dropped"
            problems.append(Problem(*where, "zero_area_box", message))
            return None
        message = f"box {array.tolist()} clipped to the {width}x{height} image"
        problems.append(Problem(*where, "box_outside_image", message))
    return clipped


def size_for_coordinates(
    stated: tuple[int, int],
    actual: tuple[int, int] | None,
    extent: tuple[float, float],
    where: tuple[str, Any],
    problems: list[Problem],
) -> tuple[int, int]:
    """The image size ``(H, W)`` that an image's coordinates refer to, when the annotation file
    states ``stated`` but the file is ``actual`` (None: they agree).

    ``extent`` is ``(max y, max x)`` over the image's boxes and polygons. When every coordinate
    fits the file (within a pixel), the coordinates were drawn on it and the stated size is
    simply wrong (halved, swapped): the file's size is used, coordinates kept. Otherwise they were
    drawn on an image of the stated size: the stated size is kept and the loader rescales the
    targets to the file (``DetectionDataset.load``). Either way the repair is reported as
    ``size_mismatch``.
    """
    if actual is None or tuple(actual) == tuple(stated):
        return stated
    fits = extent[0] <= actual[0] + 1 and extent[1] <= actual[1] + 1
    told = f"annotations say {stated[1]}x{stated[0]}, the image file is {actual[1]}x{actual[0]}"
    if fits:
        message = f"{told}: the file's size is used, coordinates kept (they all fit the file)"
    else:
        message = f"{told}: coordinates reach beyond the file, rescaled to it when loaded"
    problems.append(Problem(*where, "size_mismatch", message))
    return tuple(actual) if fits else stated


# Image paths that annotations name (COCO ``file_name``, VOC ``<filename>``) must stay inside the
# dataset's folders (``..`` or an absolute path leaving them is refused, reported as
# ``outside_root``), unless a caller allows it for the reads in a ``with outside_root_allowed():``.
_OUTSIDE_ROOT_ALLOWED: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "outside_root_allowed", default=False
)


@contextlib.contextmanager
def outside_root_allowed(allowed: bool = True) -> Iterator[None]:
    """Let the readers follow image paths that leave the dataset folder (``allowed=True``)."""
    token = _OUTSIDE_ROOT_ALLOWED.set(bool(allowed))
    try:
        yield
    finally:
        _OUTSIDE_ROOT_ALLOWED.reset(token)


def outside_roots(path: str, roots: list[str]) -> bool:
    """True when ``path`` (made absolute and normalised, symlinks not followed) lies in none of
    ``roots`` and reads outside them are not allowed (``outside_root_allowed``)."""
    if _OUTSIDE_ROOT_ALLOWED.get():
        return False
    full = os.path.normpath(os.path.abspath(path))
    for root in roots:
        base = os.path.normpath(os.path.abspath(root))
        if full == base or full.startswith(base.rstrip(os.sep) + os.sep):
            return False
    return True


def outside_root_problem(where: str, name: str, roots: list[str]) -> Problem:
    """The ``outside_root`` problem of an image path refused by ``outside_roots``."""
    message = (
        f"image path {name!r} leads outside the dataset folder {roots[-1]}: image skipped "
        "(allow it with --allow-outside-root, or dataset_options.allow_outside_root=true)"
    )
    return Problem(where, None, "outside_root", message)


def holdout_split(
    keys: list[Any], split: str, *, fraction: float = HOLDOUT_FRACTION, seed: int | None = None
) -> set[Any]:
    """The deterministic train/val split of a dataset that ships one annotation file.

    ``round(fraction * len(keys))`` keys (at least one when there are two or more and
    ``fraction > 0``) are "val", the rest "train". ``seed=None``: the last keys in sorted order
    (image ids, or file names); an integer: a random choice drawn from ``seed`` (numpy PCG64).
    """
    ordered = sorted(keys)
    if seed is not None:
        order = np.random.default_rng(int(seed)).permutation(len(ordered))
        ordered = [ordered[i] for i in order]
    num_val = 0
    if len(ordered) > 1 and fraction > 0:
        num_val = min(len(ordered) - 1, max(1, math.floor(len(ordered) * fraction + 0.5)))
    chosen = (
        ordered[len(ordered) - num_val :] if split == "val" else ordered[: len(ordered) - num_val]
    )
    return set(chosen)


def record_key(record: Record, metric: str) -> Any:
    """The key a hold-out split sorts by: the image id (COCO), else the file name's stem."""
    if metric == "coco" and record.image_id >= 0:
        return record.image_id
    return os.path.splitext(os.path.basename(record.file_name or record.image_path))[0]


def select_records(parsed: ParsedDataset, keep: set[Any], *, skip_empty: bool) -> ParsedDataset:
    """``parsed`` (read with every image kept) narrowed to the records whose ``record_key`` is in
    ``keep``, then without empty images when ``skip_empty``; missing images and empty counts are
    recomputed for the records kept."""
    chosen = [r for r in parsed.records if record_key(r, parsed.metric) in keep]
    result = ParsedDataset(
        parsed.source, [], parsed.class_names, parsed.label_to_category_id, parsed.metric,
        parsed.has_masks, list(parsed.problems), num_small=parsed.num_small,
    )  # fmt: skip
    missing = set(parsed.missing_images)
    for record in chosen:
        if record.image_path in missing:
            result.missing_images.append(record.image_path)
        if is_empty(record):
            result.num_empty += 1
            if skip_empty:
                result.num_skipped_empty += 1
                continue
        result.records.append(record)
    return result
