"""Finding files in a user's dataset folder by content, whatever the folders are called.

Used by the format detector and the folder readers (labelme, PNG masks, YOLO, VOC): images are
matched to annotation files by file stem; a folder is chosen for what it holds, not for its name.
"""

from __future__ import annotations

import os

from rcnn.errors import DatasetError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm")
# Folders never searched for data (tool output, caches, version control).
SKIPPED_DIRS = {".git", "__pycache__", ".ipynb_checkpoints", "check_pictures", "runs"}


def stem(path: str) -> str:
    """The file name without folder and suffix."""
    return os.path.splitext(os.path.basename(path))[0]


def files_with_suffix(folder: str, suffixes: tuple[str, ...]) -> list[str]:
    """Sorted paths of the files directly in ``folder`` with a suffix (any case) in ``suffixes``."""
    if not os.path.isdir(folder):
        return []
    return sorted(
        os.path.join(folder, name)
        for name in os.listdir(folder)
        if name.lower().endswith(suffixes) and os.path.isfile(os.path.join(folder, name))
    )


def images_by_stem(folder: str) -> dict[str, str]:
    """``{stem: path}`` of the images in ``folder`` (the first suffix in sorted order wins)."""
    found: dict[str, str] = {}
    for path in files_with_suffix(folder, IMAGE_SUFFIXES):
        found.setdefault(stem(path), path)
    return found


def candidate_dirs(root: str, depth: int = 2) -> list[str]:
    """``root`` and its sub-folders down to ``depth`` levels, sorted, tool folders left out."""
    found = [root]
    if depth <= 0:
        return found
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return found
    for name in names:
        path = os.path.join(root, name)
        if os.path.isdir(path) and name not in SKIPPED_DIRS and not name.startswith("."):
            found += candidate_dirs(path, depth - 1)
    return found


def find_image_dir(
    root: str, stems: list[str], *, exclude: tuple[str, ...] = (), what: str = "annotations"
) -> str:
    """The folder under ``root`` holding images for the most of ``stems`` (ties: the shallowest).

    Raises:
        DatasetError: no folder holds an image for any of them (names the first stem).
    """
    wanted = set(stems)
    best, best_hits = root, 0
    excluded = {os.path.normpath(p) for p in exclude}
    for folder in candidate_dirs(root):
        if os.path.normpath(folder) in excluded and folder != root:
            continue
        hits = len(wanted & set(images_by_stem(folder)))
        if hits > best_hits:
            best, best_hits = folder, hits
    if wanted and best_hits == 0:
        first = sorted(wanted)[0]
        raise DatasetError(
            f"{root}: no image named '{first}.*' for the {what} in any folder under it; "
            "give the image folder with --images DIR"
        )
    return best


def check_dir(path: str, option: str) -> str:
    """``path`` when it is a folder, else a ``DatasetError`` naming ``option``."""
    if not os.path.isdir(path):
        raise DatasetError(f"{option} {path}: no such folder")
    return path
