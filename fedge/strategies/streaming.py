"""Streaming weighted mean of client updates: O(model) server memory, Flower's FedAvg result.

Flower's ``aggregate_arrayrecords`` needs every reply in memory at once, then for each reply and
array calls ``Array.numpy()`` (``np.load``: two copies) and ``value * weight`` (a temporary):
O(clients × model) memory. :class:`WeightedSum` instead folds each update
into one preallocated sum as it arrives, reading the update through zero-copy views of its
``Array.data`` (:func:`fedge.codec.array_view`), so the reply can be dropped right after.

What it computes, and why it equals ``FedAvg.aggregate_train`` within float rounding: Flower
returns ``Σᵢ xᵢ·(wᵢ/W)`` with ``W = Σᵢ wᵢ``, accumulated in ``value.numpy() * weight``'s dtype —
the array's own dtype for floating arrays, float64 for integer and bool arrays (e.g. BatchNorm's
``num_batches_tracked``). We accumulate ``Σᵢ wᵢ·xᵢ`` (W is unknown until the last reply) in that
same dtype and divide once at the end; the two differ only by float rounding of the same sums.
One deliberate exception: float16 arrays are summed in float32 and rounded to float16 once
(Flower sums in float16 and loses more).

Why torch for the fold (one core, GB/s of update bytes, d = 1e6 / 1e7 float32 parameters):
``w @ buf`` over one contiguous (clients, d) buffer, the ceiling, 31.7 / 28.1; torch
``acc.add_(x, alpha=w)`` 29.3 / 23.9; numpy ``acc += x * w`` 19.9 / 7.0 (a temporary per update);
numpy in cache-sized blocks 16.4 / 13.2; torch into a float64 sum 13.8 / 1.1. So float32 arrays
are summed in float32 with torch's fused in-place axpy; other dtypes (small in practice) with
numpy. End to end (``bench/datapath.py``, 100 updates, result included): 20.9 / 22.5 GB/s, 62 % /
73 % of the ceiling, 2.8x / 3.8x Flower's ``aggregate_arrayrecords``.

Secure aggregation needs no class here: its server already adds each masked uint32 vector into
one running sum in place (:mod:`fedge.security.secagg`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping

import numpy as np
import torch
from flwr.app import ArrayRecord

from fedge.codec import array_from_numpy, as_views

Update = ArrayRecord | Mapping[str, np.ndarray]
"""An update: a Flower ``ArrayRecord`` (read zero-copy) or name → ndarray (e.g. opened sealed arrays)."""

Layout = Mapping[str, tuple[np.dtype, tuple[int, ...]]]
"""Names, dtypes and shapes of an update's arrays."""

_TORCH_AXPY = (np.dtype(np.float32), np.dtype(np.float64))


def _result_dtype(dtype: np.dtype) -> np.dtype:
    """Flower's dtype for ``array * float``: floating dtypes stay, integers and bools become float64."""
    return np.result_type(dtype, 1.0).newbyteorder("=")


def _sum_dtype(dtype: np.dtype) -> np.dtype:
    out = _result_dtype(dtype)
    return np.dtype(np.float32) if out == np.float16 else out


def _axpy(acc: np.ndarray, x: np.ndarray, weight: float, first: bool) -> None:
    """``acc += weight * x`` in place (``acc = weight * x`` when ``first``), no temporary for floats.

    Why ``first``: the sum starts as ``np.empty`` and the first update initializes it, which saves
    a zeroing pass and the page faults of a lazily zeroed ``np.zeros`` (measured ~40 ms per 40 MB
    on this VM, as long as folding two updates).
    """
    if x.dtype == acc.dtype and acc.dtype in _TORCH_AXPY:
        with warnings.catch_warnings():  # x views immutable bytes; torch only reads it
            warnings.simplefilter("ignore", UserWarning)
            other = torch.from_numpy(x)
        if first:
            torch.mul(other, weight, out=torch.from_numpy(acc))
        else:
            torch.from_numpy(acc).add_(other, alpha=weight)
    elif first:
        np.multiply(x, weight, out=acc, dtype=acc.dtype)
    else:
        np.add(acc, np.multiply(x, weight, dtype=acc.dtype), out=acc)


class WeightedSum:
    """Running ``Σ wᵢ·xᵢ`` over updates, folded in place; :meth:`result` divides by ``Σ wᵢ``.

    Parameters
    ----------
    reference : Update, optional
        Fixes array names, shapes and dtypes and preallocates the sum (e.g. the global model
        sent in the instruction). Without it, the first :meth:`add` does.

    Notes
    -----
    Memory: one sum the size of the model (float64 for integer arrays), whatever the number of
    updates. Every update must have exactly the reference's names, shapes and dtypes, as
    Flower's ``validate_message_reply_consistency`` requires of the keys.
    """

    def __init__(self, reference: Update | None = None) -> None:
        self._sums: dict[str, np.ndarray] = {}
        self._layout: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}
        self._total = 0.0
        self._count = 0
        self._finished = False
        self._broken = False
        if reference is not None:
            views = as_views(reference)
            self._allocate({name: (x.dtype, x.shape) for name, x in views.items()})

    @property
    def total_weight(self) -> float:
        """``Σ wᵢ`` of the updates added so far."""
        return self._total

    @property
    def count(self) -> int:
        """Number of updates added so far."""
        return self._count

    def _allocate(self, layout: Layout) -> None:
        self._layout = dict(layout)
        self._sums = {name: np.empty(shape, _sum_dtype(dtype)) for name, (dtype, shape) in layout.items()}

    def _check(self, layout: Layout) -> None:
        if layout.keys() != self._layout.keys():
            missing, extra = self._layout.keys() - layout.keys(), layout.keys() - self._layout.keys()
            raise ValueError(f"update arrays differ from the reference: missing {missing}, extra {extra}")
        for name, (got_dtype, got_shape) in layout.items():
            dtype, shape = self._layout[name]
            if got_dtype != dtype or got_shape != shape:
                raise ValueError(
                    f"update array {name!r} is {got_dtype}{list(got_shape)}, "
                    f"the reference {dtype}{list(shape)}"
                )

    def add(self, update: Update, weight: float) -> None:
        """Fold ``weight · update`` into the sum; ``update`` can be dropped right after.

        Raises
        ------
        ValueError
            If ``weight`` is negative or not finite, or the update's names, shapes or dtypes differ from the
            reference (nothing is added then).
        """
        views = as_views(update)
        self.add_arrays({name: (x.dtype, x.shape) for name, x in views.items()}, views.items(), weight)

    def add_arrays(self, layout: Layout, arrays: Iterable[tuple[str, np.ndarray]], weight: float) -> None:
        """:meth:`add` of an update given one array at a time, each dropped once folded.

        For an update read piece by piece (a sealed reply in its spool file): ``layout`` (names,
        dtypes, shapes) is checked before anything is folded, and ``arrays`` must yield exactly
        those arrays. If ``arrays`` fails part-way (or yields something else), the sum holds part
        of an update: it raises, and this accumulator refuses any further use.
        """
        if self._finished or self._broken:
            raise RuntimeError("result() was already taken, or an update failed part-way; start anew")
        weight = float(weight)
        if not math.isfinite(weight) or weight < 0:
            # A negative weight is no count of examples: with it one update cancels the others or,
            # Σ wᵢ near 0, moves the mean arbitrarily far. Zero adds nothing and stays allowed.
            raise ValueError(f"weight must be finite and not negative, got {weight}")
        if not self._layout:
            self._allocate(layout)
        self._check(layout)
        first, left = not self._count, set(layout)
        try:
            for name, x in arrays:
                if name not in left or (x.dtype, x.shape) != self._layout[name]:
                    raise RuntimeError(f"array {name!r} is not the one the update's layout announced")
                left.discard(name)
                _axpy(self._sums[name], x, weight, first=first)
                del x
            if left:
                raise RuntimeError(f"the update ended without arrays {sorted(left)}")
        except BaseException:
            self._broken = True  # a partly folded update: the sum is no longer any mean
            raise
        self._total += weight
        self._count += 1

    def result(self) -> ArrayRecord:
        """The weighted mean ``Σ wᵢ·xᵢ / Σ wᵢ`` as an ``ArrayRecord`` in the reference's order.

        Dtypes are Flower's (floating stay, integer and bool become float64). Divides in place
        and releases each sum as soon as its ``Array`` is built, so the peak stays near one
        model; the accumulator cannot be used afterwards.
        """
        if self._finished or self._broken:
            raise RuntimeError("result() was already taken, or an update failed part-way")
        if not self._count:
            raise ValueError("no update was added")
        if self._total == 0.0:
            raise ValueError("the updates' weights sum to 0; a weighted mean is undefined")
        self._finished = True
        record = ArrayRecord()
        for name, (dtype, _) in self._layout.items():
            acc = self._sums.pop(name)
            np.divide(acc, self._total, out=acc)
            record[name] = array_from_numpy(acc.astype(_result_dtype(dtype), copy=False))
            del acc
        return record
