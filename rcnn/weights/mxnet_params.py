"""MXNet's NDArray list files (GluonCV's ``.params``) read with NumPy alone; MXNet is not needed.

The layout (``src/ndarray/ndarray.cc``, ``NDArray::Save`` of a list, MXNet 1.x; little endian):

- ``uint64`` list magic ``0x112``, ``uint64`` reserved;
- ``uint64`` number of arrays, then each array:
  ``uint32`` array magic (V2 ``0xF993FAC9``, V3 ``0xF993FACA`` numpy-shape, V1 ``0xF993FAC8``;
  anything else is the ``ndim`` of the legacy layout with ``uint32`` dimensions),
  ``int32`` storage type (V2 / V3 only; 0 = dense), shape (``int32`` ndim + ``int64`` dims),
  context (``int32`` device type, ``int32`` device id), ``int32`` dtype flag, the raw data;
- ``uint64`` number of names, then each name as ``uint64`` length + UTF-8 bytes.

Gluon's ``save_parameters`` names arrays by attribute path (``features.0.weight``); symbol
checkpoints prefix ``arg:`` / ``aux:``, which ``read_params`` strips.
"""

from __future__ import annotations

import os
import struct

import numpy as np

from rcnn.errors import CheckpointError

LIST_MAGIC = 0x112
V1_MAGIC, V2_MAGIC, V3_MAGIC = 0xF993FAC8, 0xF993FAC9, 0xF993FACA
# mshadow type flags (include/mshadow/base.h)
DTYPES = {
    0: np.float32,
    1: np.float64,
    2: np.float16,
    3: np.uint8,
    4: np.int32,
    5: np.int8,
    6: np.int64,
    7: np.bool_,
}


class _Reader:
    """Sequential little-endian reads from a bytes buffer; a short read is a truncated file."""

    def __init__(self, data: bytes, path: str) -> None:
        self.data, self.pos, self.path = data, 0, path

    def take(self, size: int) -> bytes:
        if self.pos + size > len(self.data):
            raise CheckpointError(
                f"{self.path}: truncated MXNet .params file (needed {size} bytes at offset "
                f"{self.pos}, the file has {len(self.data)})"
            )
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))


def _read_array(reader: _Reader) -> np.ndarray | None:
    """One NDArray (None for MXNet's "none" array of shape ``()``)."""
    (magic,) = reader.unpack("I")
    if magic in (V2_MAGIC, V3_MAGIC):
        (stype,) = reader.unpack("i")
        if stype != 0:
            raise CheckpointError(
                f"{reader.path}: sparse arrays (storage type {stype}) unsupported"
            )
    if magic in (V1_MAGIC, V2_MAGIC, V3_MAGIC):
        (ndim,) = reader.unpack("i")
        shape = reader.unpack(f"{max(ndim, 0)}q")
    else:  # legacy: the magic is the ndim, uint32 dimensions
        ndim = magic
        shape = reader.unpack(f"{ndim}I")
    if ndim <= 0 and magic != V3_MAGIC:
        return None
    reader.unpack("ii")  # context: device type, device id
    (flag,) = reader.unpack("i")
    if flag not in DTYPES:
        raise CheckpointError(f"{reader.path}: unknown MXNet dtype flag {flag}")
    dtype = np.dtype(DTYPES[flag]).newbyteorder("<")
    count = int(np.prod(shape, dtype=np.int64))
    data = reader.take(count * dtype.itemsize)
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()


def parse_params(data: bytes, path: str = "<bytes>") -> dict[str, np.ndarray]:
    """``{name: array}`` from the bytes of an MXNet NDArray list file."""
    reader = _Reader(data, path)
    if len(data) < 16 or reader.unpack("Q")[0] != LIST_MAGIC:
        raise CheckpointError(f"{path}: not an MXNet .params file (no NDArray list magic 0x112)")
    reader.unpack("Q")  # reserved
    (count,) = reader.unpack("Q")
    arrays = [_read_array(reader) for _ in range(count)]
    (num_names,) = reader.unpack("Q")
    names = []
    for _ in range(num_names):
        (length,) = reader.unpack("Q")
        names.append(reader.take(length).decode("utf-8"))
    if num_names != count:
        raise CheckpointError(f"{path}: {count} arrays but {num_names} names (an unnamed list?)")
    out = {}
    for name, array in zip(names, arrays, strict=True):
        if array is not None:
            out[name.split(":", 1)[1] if name.startswith(("arg:", "aux:")) else name] = array
    return out


def read_params(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``{name: array}`` of the MXNet ``.params`` file at ``path`` (``CheckpointError`` if not)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such weight file")
    with open(path, "rb") as handle:
        return parse_params(handle.read(), path)


def is_params_file(path: str | os.PathLike) -> bool:
    """True when the file starts with MXNet's NDArray list magic."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError:
        return False
    return len(head) == 8 and struct.unpack("<Q", head)[0] == LIST_MAGIC


def write_params(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` in the V2 layout above (float32/float64/int arrays on the CPU context).

    Used to make test files and to hand weights back to MXNet users.
    """
    flags = {np.dtype(v).newbyteorder("<"): k for k, v in DTYPES.items()}
    parts = [struct.pack("<QQQ", LIST_MAGIC, 0, len(arrays))]
    for array in arrays.values():
        array = np.ascontiguousarray(array)
        dtype = array.dtype.newbyteorder("<")
        parts.append(struct.pack("<Iii", V2_MAGIC, 0, array.ndim))
        parts.append(struct.pack(f"<{array.ndim}q", *array.shape))
        parts.append(struct.pack("<iii", 1, 0, flags[dtype]))
        parts.append(array.astype(dtype, copy=False).tobytes())
    parts.append(struct.pack("<Q", len(arrays)))
    for name in arrays:
        encoded = name.encode("utf-8")
        parts.append(struct.pack("<Q", len(encoded)) + encoded)
    with open(path, "wb") as handle:
        handle.write(b"".join(parts))
