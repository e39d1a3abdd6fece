"""Tensor bytes: the raw little-endian layout the protocol's binary forms use, both ways.

Fixed-size datatypes are the array's bytes in row-major order. BYTES elements are each a 4-byte
little-endian length followed by that many bytes. BOOL is one byte per element.
"""

from __future__ import annotations

import struct

import numpy as np

from converters.spec import DATATYPE_TO_NUMPY
from serve.core.errors import ErrorCode, InferenceError, invalid

_LEN = struct.Struct("<I")
#: Most dimensions a tensor may have (numpy's own limit is 64; no ONNX model here needs 8).
MAX_DIMS = 32
#: Each datatype's numpy dtype in the wire's byte order (made once: a request is on the path).
_WIRE = {name: dtype.newbyteorder("<") for name, dtype in DATATYPE_TO_NUMPY.items()}


def element_count(shape: list[int]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def check_shape(name: str, shape: list[int], max_elements: int) -> int:
    """The element count of a declared shape, refused before any allocation if absurd: 400 for
    a shape that is not one, 413 for one over the element limit."""
    check_dims(name, shape)
    return check_size(name, shape, max_elements)


def check_dims(name: str, shape: list[int]) -> None:
    """400 unless `shape` is a list of at most MAX_DIMS non-negative integers."""
    if len(shape) > MAX_DIMS:
        raise invalid(f"input '{name}': {len(shape)} dimensions; the limit is {MAX_DIMS}")
    if any(type(d) is not int or d < 0 for d in shape):
        raise invalid(f"input '{name}': shape {shape} must be a list of non-negative integers")


def check_size(name: str, shape: list[int], max_elements: int) -> int:
    """The element count of a well-formed shape; 413 over `max_elements` (or for a dimension
    over it: a zero elsewhere would make the count small, but numpy still refuses it)."""
    count = element_count(shape)
    if count > max_elements or any(d > max_elements for d in shape):
        raise InferenceError(
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"input '{name}': shape {shape} has {count} elements; the limit is {max_elements}",
        )
    return count


def numpy_dtype(name: str, datatype: str) -> np.dtype:
    try:
        return DATATYPE_TO_NUMPY[datatype]
    except KeyError:
        raise invalid(
            f"input '{name}': unknown datatype {datatype!r}; expected one of "
            f"{', '.join(DATATYPE_TO_NUMPY)}"
        ) from None


def from_raw(name: str, datatype: str, shape: list[int], raw: bytes | memoryview) -> np.ndarray:
    count = element_count(shape)
    if datatype == "BYTES":
        return _bytes_from_raw(name, shape, count, raw)
    dtype = _WIRE[datatype] if datatype in _WIRE else numpy_dtype(name, datatype)  # raises
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise invalid(
            f"input '{name}': {datatype} {shape} needs {expected} bytes of raw data; got {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _bytes_from_raw(name: str, shape: list[int], count: int, raw: bytes | memoryview) -> np.ndarray:
    view = memoryview(raw)
    items: list[bytes] = []
    offset = 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise invalid(f"input '{name}': BYTES raw data ends inside an element's length prefix")
        (length,) = _LEN.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise invalid(f"input '{name}': BYTES element of {length} bytes overruns the data")
        items.append(bytes(view[offset : offset + length]))
        offset += length
        if len(items) > count:
            break
    if len(items) != count:
        raise invalid(f"input '{name}': BYTES {shape} needs {count} elements; got {len(items)}")
    out = np.empty(count, dtype=object)
    out[:] = items
    return out.reshape(shape)


def to_raw(datatype: str, array: np.ndarray) -> bytes:
    if datatype == "BYTES":
        return b"".join(_LEN.pack(len(b)) + b for b in (_as_bytes(x) for x in array.reshape(-1)))
    dtype = _WIRE[datatype]
    return np.ascontiguousarray(array, dtype=dtype).tobytes()


def _as_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode()
