"""Zero-copy numpy views of Flower ``Array`` objects, and the dtypes fedge accepts on the wire.

``Array.numpy()`` goes through ``np.load`` and copies every tensor. Sealing and validating only
need to *read* the tensors, so this module parses the ``.npy`` header that ``Array.data`` carries
and returns a read-only ``np.frombuffer`` view over the same bytes instead.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.common.constant import SType

from fedge.errors import FedgeError

#: Plain numeric dtypes, both byte orders: anything else (object, strings, structured, datetime,
#: platform-dependent float128) is refused, so a peer can never make us unpickle or misread data.
ALLOWED_DTYPES: dict[str, np.dtype] = {
    np.dtype(order + code).str: np.dtype(order + code)
    for order in "<>"
    for code in ("?", "i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f2", "f4", "f8", "c8", "c16")
}


def wire_dtype(dtype: np.dtype) -> str:
    """``dtype.str`` if fedge carries this dtype, else raise ``TypeError``."""
    code = dtype.str
    if code not in ALLOWED_DTYPES:
        raise TypeError(f"dtype {dtype} is not a plain numeric dtype; fedge only carries {_names()}")
    return code


def _names() -> str:
    return ", ".join(sorted({str(d) for d in ALLOWED_DTYPES.values()}))


def array_view(array: Array) -> np.ndarray:
    """Read-only view of a Flower ``Array`` (``stype`` numpy) without copying its data."""
    if array.stype != SType.NUMPY:
        raise FedgeError(
            f"array of stype {array.stype!r} is not supported",
            "fedge reads arrays serialized by flwr's Array(ndarray) (stype 'numpy.ndarray')",
        )
    data = array.data
    stream = io.BytesIO(data)  # shares `data` until written to: no copy
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
    else:  # rare (UTF-8 field names); let numpy handle it, at the cost of one copy
        return np.asarray(array.numpy())
    if dtype.hasobject:
        raise FedgeError("array holds Python objects", "send plain numeric arrays")
    count = math.prod(shape)
    if count == 0:
        return np.empty(shape, dtype=dtype)
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=stream.tell())
    return flat.reshape(shape, order="F" if fortran else "C")


def as_views(arrays: ArrayRecord | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Name → ndarray for an ``ArrayRecord`` (zero-copy views) or a mapping of arrays (as is)."""
    if isinstance(arrays, ArrayRecord):
        return {name: array_view(arr) for name, arr in arrays.items()}
    return {name: np.asarray(arr) for name, arr in arrays.items()}
