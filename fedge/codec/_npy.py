"""The ``.npy`` bytes inside a Flower ``Array``: where the header ends and the tensor begins.

Flower's ``Array`` (flwr 1.41) stores a tensor as the output of ``np.save``: ``dtype`` (str),
``shape``, ``stype = "numpy.ndarray"`` and ``data: bytes`` = magic, version, a Python-literal
dict (descr, fortran_order, shape) padded to 64 bytes, then the raw tensor bytes. The constructor
insists on ``bytes``, and ``Array.numpy()`` goes through ``np.load``, which copies the tensor
(twice: ``BytesIO.read`` then into a fresh array). The codec and streaming aggregation only need
to know where the raw bytes start and how to read them, so this module parses the header and
returns ``np.frombuffer`` views over ``Array.data`` itself: no copy at all. It is the one reader
of ``Array`` bytes in fedge: the codec, streaming and secure aggregation, sealing and validation
all read tensors through :func:`array_view`, so they all refuse the same malformed input (a header
numpy would not load, object dtypes, a tensor shorter or longer than its header says).

Why a cache: numpy's header parser ``ast.literal_eval``s the dict (~20 µs per array here). A
federation trains one model, so every reply of every round carries the same few headers; parsing
each distinct header once makes a view cost about as much as a dict lookup.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.common.constant import SType

from fedge.errors import FedgeError

NPY_MAGIC = b"\x93NUMPY"
MAX_PREFIX = 1 << 16  #: numpy's own reader refuses headers above 10 000 bytes unless told otherwise


class ArrayFormatError(FedgeError, ValueError):
    """An ``Array`` that is not plain ``np.save`` bytes of a numeric tensor.

    A ``FedgeError`` (the device's sealing turns it into an error reply, validation into a
    refusal) and a ``ValueError`` (callers that fall back to ``Array.numpy()`` catch that).
    """


@dataclass(frozen=True, slots=True)
class NpyLayout:
    """What a complete ``.npy`` header says about the bytes after it."""

    offset: int  #: header length: the tensor's first byte
    dtype: np.dtype
    shape: tuple[int, ...]
    fortran: bool

    @property
    def nbytes(self) -> int:
        """Length of the raw tensor the header announces."""
        return math.prod(self.shape) * self.dtype.itemsize


def prefix_length(data: bytes | memoryview) -> int:
    """Length of the ``.npy`` v1/v2 header ``data`` starts with; 0 if it starts with none.

    Reads only the fixed fields (magic, version, header length), so it is cheap and never
    allocates more than a few bytes, whatever ``data`` claims.
    """
    if len(data) < 12 or bytes(data[:6]) != NPY_MAGIC:
        return 0
    major = data[6]
    if major == 1:
        length = 10 + int.from_bytes(data[8:10], "little")
    elif major == 2:
        length = 12 + int.from_bytes(data[8:12], "little")
    else:  # v3 (UTF-8 field names) and unknown versions: carried opaquely
        return 0
    return length if length <= min(len(data), MAX_PREFIX) else 0


@lru_cache(maxsize=4096)
def parse_prefix(prefix: bytes) -> NpyLayout | None:
    """Layout of a complete ``.npy`` header, or ``None`` unless numpy would read it as a plain array.

    ``None`` for: another version than 1.0/2.0, trailing bytes after the header, object dtypes
    (their bytes are pickles), zero-size items, negative dimensions. Safe on untrusted bytes:
    numpy's reader uses ``ast.literal_eval`` and the input is at most :data:`MAX_PREFIX` bytes.
    """
    if len(prefix) > MAX_PREFIX or prefix_length(prefix) != len(prefix):
        return None
    stream = io.BytesIO(prefix)
    fmt = np.lib.format
    try:
        version = fmt.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(stream, max_header_size=MAX_PREFIX)
        else:
            shape, fortran, dtype = fmt.read_array_header_2_0(stream, max_header_size=MAX_PREFIX)
    except Exception:  # ValueError, SyntaxError, TypeError, ...: numpy would not load it either
        return None
    if stream.tell() != len(prefix) or dtype.hasobject or dtype.itemsize == 0:
        return None
    if any(dim < 0 for dim in shape):
        return None
    return NpyLayout(len(prefix), dtype, tuple(shape), bool(fortran))


def layout_of(data: bytes | memoryview) -> NpyLayout | None:
    """Layout of ``np.save`` bytes whose tensor length matches their header, else ``None``."""
    length = prefix_length(data)
    if not length:
        return None
    layout = parse_prefix(bytes(data[:length]))
    if layout is None or len(data) - length != layout.nbytes:
        return None
    return layout


def array_view(array: Array) -> np.ndarray:
    """Read-only ndarray over ``array.data`` (no copy); equal to ``array.numpy()``.

    Raises
    ------
    ArrayFormatError
        If ``array`` is not a plain numeric tensor serialized by ``Array(ndarray)``.
    """
    layout = layout_of(array.data) if array.stype == SType.NUMPY else None
    if layout is None:
        raise ArrayFormatError(
            f"array of dtype {array.dtype!r}, stype {array.stype!r} is not plain np.save bytes of a "
            "numeric tensor",
            "send arrays made by flwr's Array(ndarray) (stype 'numpy.ndarray') of a numeric dtype",
        )
    count = math.prod(layout.shape)
    flat = np.frombuffer(array.data, dtype=layout.dtype, count=count, offset=layout.offset)
    return flat.reshape(layout.shape, order="F" if layout.fortran else "C")


def as_views(arrays: ArrayRecord | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Name → ndarray: zero-copy views of an ``ArrayRecord``, or a mapping of arrays as it is.

    Aggregation and validation take either form (a reply's record, or arrays a sealed reply was
    opened into), so both read them through this one function.
    """
    if isinstance(arrays, ArrayRecord):
        return {name: array_view(array) for name, array in arrays.items()}
    return {name: np.asarray(value) for name, value in arrays.items()}


@lru_cache(maxsize=4096)
def npy_prefix(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """The ``np.save`` header of a C-ordered array of ``dtype`` and ``shape`` (what ``Array`` stores).

    Format 1.0 as ``np.save`` writes it, 2.0 only when 1.0 cannot hold the header; lets a
    tensor's bytes be written after it in place (decryption, file reads) with no extra copy.
    """
    header = io.BytesIO()
    info = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    try:
        np.lib.format.write_array_header_1_0(header, info)
    except ValueError:
        header = io.BytesIO()
        np.lib.format.write_array_header_2_0(header, info)
    return header.getvalue()


def array_from_numpy(ndarray: np.ndarray) -> Array:
    """``Array(ndarray)`` bit for bit, with one copy of the tensor instead of about three.

    Flower's ``Array.from_numpy_ndarray`` runs ``np.save`` into a ``BytesIO``: 16 MiB
    ``tobytes()`` chunks, a growing buffer, then ``getvalue()``. Here the npy header comes from
    numpy's own writer and the tensor is joined to it in one pass. Anything unusual (not
    C-contiguous, object dtype, a header too long for format 1.0) goes through ``Array``.
    """
    array = np.asarray(ndarray)
    if not array.flags.c_contiguous or array.dtype.hasobject:
        return Array(array)
    header = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(array))
    except ValueError:
        return Array(array)
    data = b"".join((header.getvalue(), array.reshape(-1).view(np.uint8).data))
    return Array(dtype=str(array.dtype), shape=tuple(array.shape), stype=SType.NUMPY, data=data)
