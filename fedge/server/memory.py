"""Hand freed heap memory back to the operating system after a large release.

Why: a device's partial messages are freed the moment its stream ends (``Assembler.clear``), but
glibc keeps freed heap pages mapped for reuse, so the server's RSS stayed ~150 MB up after one
abandoned 160 MB message (measured) — indistinguishable, for an operator or an OOM killer, from
a leak. ``malloc_trim(0)`` returns every free page it can. Elsewhere (musl, macOS) it is a no-op.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable

#: Freed bytes below which trimming is not worth a call (it walks the heap).
TRIM_AFTER = 32 * 1024 * 1024


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:  # the process's own symbols: glibc's malloc_trim, without find_library's ldconfig run
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def released(freed: int) -> None:
    """Tell the allocator ``freed`` bytes were just let go; trims when that is a lot."""
    trim = _malloc_trim()
    if freed >= TRIM_AFTER and trim is not None:
        trim(0)
