"""Fixed-point quantization into Z_2^32, so masks can be added and cancelled exactly.

Masking needs a finite group; floats are not one. Each element is clipped to [-clip, clip] and
mapped to an unsigned integer with ``bits`` bits; a sum of m such integers is exact as long as
``m · (2^bits - 1) < 2^32``, so the masked sum can be taken mod 2^32 with numpy's uint32 wraparound
and still decode to the true sum.
"""

from __future__ import annotations

import numpy as np

from fedge.security.secagg._errors import SecAggError


def _check(clip: float, bits: int) -> int:
    if not 1 <= bits <= 31:
        raise SecAggError(f"quant-bits={bits} must be between 1 and 31", "use e.g. --quant-bits 22")
    if not np.isfinite(clip) or clip <= 0:
        raise SecAggError(f"clip={clip} must be a positive finite number", "use e.g. clip=8.0")
    return 2**bits - 1


def quantize(values: np.ndarray, clip: float, bits: int) -> np.ndarray:
    """Clip to [-clip, clip] and map linearly onto {0, …, 2^bits - 1} (round to nearest).

    Parameters
    ----------
    values : np.ndarray
        Any float array (computed in float64); NaN or infinity is refused, because clipping would
        silently turn a diverged update into a plausible one.
    clip : float
        Clipping range; the rounding error per element is at most ``clip / (2^bits - 1)``.
    bits : int
        Bits per element (1..31).

    Returns
    -------
    np.ndarray
        uint32 of the same shape.
    """
    levels = _check(clip, bits)
    scaled = np.array(values, dtype=np.float64)  # one copy, then in place: the caller's array is untouched
    if not np.isfinite(scaled).all():
        raise SecAggError("cannot quantize a vector with NaN or infinite values", "the local update diverged")
    np.clip(scaled, -clip, clip, out=scaled)
    scaled += clip  # exact lower end: -clip + clip == 0.0
    scaled *= levels / (2.0 * clip)  # upper end may land an ulp above levels; rint brings it back
    np.rint(scaled, out=scaled)
    return scaled.astype(np.uint32)


def dequantize(total: np.ndarray, count: int, clip: float, bits: int) -> np.ndarray:
    """Decode the uint32 sum of ``count`` quantized vectors into the float64 sum of the originals.

    Each vector contributed an offset of ``clip``; the sum's is ``count · clip``.
    """
    levels = _check(clip, bits)
    if count < 1 or count * levels >= 2**32:
        raise SecAggError(
            f"a sum of {count} vectors quantized with {bits} bits cannot be decoded from uint32",
            "count must be >= 1 and count * (2^bits - 1) < 2^32",
        )
    out = np.asarray(total, dtype=np.uint32).astype(np.float64)
    out *= 2.0 * clip / levels
    out -= count * clip
    return out
