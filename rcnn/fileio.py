"""Writing output files atomically, with one-line errors when the folder cannot take them.

``atomic_file(path)`` writes to a temporary file in the same folder, fsyncs it and renames it over
``path``: a full disk, a read-only folder, a denied permission or a kill leaves the previous file
(or none), never a half-written one. An ``OSError`` while writing becomes an ``OutputError`` naming
the file, its folder and the cause (``rcnn.cli`` prints it as one line).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from rcnn.errors import OutputError, UserError

REASONS = {
    errno.ENOSPC: "no space left on the disk",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a path component is a file, not a folder",
    errno.EISDIR: "it is a folder",
}


def output_error(error: OSError, path: str | os.PathLike) -> OutputError:
    """The one-line ``OutputError`` for an ``OSError`` met while writing ``path``."""
    path = Path(path)
    reason = REASONS.get(error.errno or 0, error.strerror or str(error))
    code = f" ({errno.errorcode[error.errno]})" if error.errno in errno.errorcode else ""
    return OutputError(f"cannot write {path.name} in folder {path.parent}: {reason}{code}")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """An open temporary file that replaces ``path`` when the block ends without error.

    Raises:
        OutputError: the folder cannot be created or written (the temporary file is removed).
    """
    path = Path(path)
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # not mkstemp: its files are private (0600); this one gets the umask's permissions, as
        # a plain open() would give the file it replaces
        tmp_name = str(path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        with open(tmp_name, mode.replace("w", "x")) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
        tmp_name = None
    except OSError as error:
        raise output_error(error, path) from None
    finally:
        if tmp_name is not None:
            Path(tmp_name).unlink(missing_ok=True)
    _fsync_dir(path.parent)


def write_text(path: str | os.PathLike, text: str) -> None:
    """``path.write_text(text)``, atomically (see ``atomic_file``)."""
    with atomic_file(path, "w") as handle:
        handle.write(text)


def output_folder(path: str | os.PathLike, option: str = "--output") -> Path:
    """Create folder ``path`` (``UserError`` when it names an existing file, ``OutputError`` when
    it cannot be created); returns it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path}: is an existing file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(
            f"{option} {path}: cannot create the folder: "
            f"{REASONS.get(error.errno or 0, error.strerror or str(error))}"
        ) from None
    if not os.access(path, os.W_OK):
        raise OutputError(f"{option} {path}: the folder is not writable (permission denied)")
    return path


def _fsync_dir(folder: Path) -> None:
    # The rename is durable only once the directory entry is flushed (POSIX; not on Windows).
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
