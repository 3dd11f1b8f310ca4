"""Fresh ``bytes`` filled in place: the one copy Flower's ``bytes``-only records allow.

Why: Flower's ``Array.data`` and ``ConfigRecord`` values must be ``bytes``, which cannot view
another buffer. Building one from data that is produced piece by piece (a tensor decrypted chunk
by chunk, a body read from a file, a sealed payload encrypted chunk by chunk) normally takes a
scratch buffer and then ``bytes(scratch)``: two model-sized buffers at the peak, one copy more
than needed. CPython's documented C API has the way out that C extensions use:
``PyBytes_FromStringAndSize(NULL, n)`` returns a new, uninitialised ``bytes`` that its creator
may fill before anyone else sees it. :func:`fresh_bytes` returns such an object and a writable
view of its buffer; the caller fills it through the view, drops the view, and only then hands
the ``bytes`` on. It also skips the zeroing pass that ``bytes(n)`` makes (page faults at
~2 GB/s on our VMs).
"""

from __future__ import annotations

import ctypes

_new = ctypes.pythonapi.PyBytes_FromStringAndSize
_new.argtypes, _new.restype = [ctypes.c_void_p, ctypes.c_ssize_t], ctypes.py_object
_address = ctypes.pythonapi.PyBytes_AsString
_address.argtypes, _address.restype = [ctypes.py_object], ctypes.c_void_p


def fresh_bytes(size: int) -> tuple[bytes, memoryview]:
    """A new ``bytes`` of ``size`` (contents undefined) and a writable view of it.

    The view must be filled completely and dropped before the ``bytes`` is shared or hashed:
    ``bytes`` are immutable to everyone else, and a hash, once cached, would not follow.
    """
    if size < 0:
        raise ValueError(f"size must not be negative, got {size}")
    data: bytes = _new(None, size)
    if size == 0:
        return data, memoryview(bytearray())
    view = memoryview((ctypes.c_char * size).from_address(_address(data))).cast("B")
    return data, view
