"""Validation of what clients send back (security layer 5): refuse it before it reaches a strategy.

Layers: docs/architecture.md, "Security, in layers".

A signature proves *who* sent an update, not that it is usable: one NaN, a transposed matrix or a
huge update from one client ruins the aggregate for everyone. :func:`validate_reply` checks a
reply against the global model it answers — names, shapes, dtypes, finiteness and optionally the
L2 norm of the update — and :func:`check_freshness` checks it belongs to this run and round.

Names, shapes and dtypes are compared only when the app declares that its replies mirror its
instructions (``mirror``): fedge's own app does, but a Flower app may legitimately answer a model
with float64 arrays, an emptied record (``secaggplus_mod``) or other arrays altogether (a query
app's histograms). Finiteness always holds; a norm bound needs an update of the model sent, so
with one the names and shapes must match whatever ``mirror`` says.
Each refusal is a :class:`ValidationError` whose ``reason`` is a short code for the audit log and
whose message names the offending array.

Cost: both scans walk each tensor in blocks of ``_BLOCK`` elements (a few MB of temporaries,
whatever the model size), over zero-copy views of the ``ArrayRecord`` bytes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from flwr.app import ArrayRecord

from fedge.codec import array_view, as_views
from fedge.errors import FedgeError

__all__ = ["StreamValidator", "ValidationError", "check_freshness", "update_norm", "validate_reply"]

_BLOCK = 1 << 18  # elements per scan step: 2 MiB of float64 temporaries
_FLOAT_KINDS = "fc"


class ValidationError(FedgeError):
    """A client reply was refused.

    ``reason`` is one of ``names``, ``shape``, ``dtype``, ``non-finite``, ``norm``,
    ``stale-round``, ``foreign-run``; ``array`` names the offending array when there is one.
    """

    def __init__(self, reason: str, message: str, *, array: str | None = None, hint: str = "") -> None:
        super().__init__(f"reply refused ({reason}): {message}", hint)
        self.reason = reason
        self.detail = message  # without the prefix, for callers that state the reason themselves
        self.array = array


def validate_reply(
    arrays: ArrayRecord | Mapping[str, np.ndarray],
    reference: ArrayRecord,
    *,
    max_norm: float | None = None,
    mirror: bool = True,
) -> None:
    """Check a client's reply arrays against the global model they were computed from.

    Parameters
    ----------
    arrays : ArrayRecord | Mapping[str, np.ndarray]
        The reply (e.g. what :func:`fedge.security.seal.open_sealed` returned).
    reference : ArrayRecord
        The global model sent in the instruction.
    max_norm : float | None
        If set, the L2 norm of ``reply - reference`` over all floating-point arrays must not exceed
        it. Integer/bool arrays (counters such as BatchNorm's ``num_batches_tracked``) are checked
        for shape and dtype but left out of the norm: they are not learned parameters.
    mirror : bool
        The reply has the reference's names, shapes and dtypes (the app declared so). Without
        it only a norm bound compares the two, and then by names and shapes only.

    Raises
    ------
    ValidationError
        With ``reason`` ``names``, ``shape``, ``dtype``, ``non-finite``, ``norm`` or
        ``reference`` (the instruction's own arrays are unreadable, so nothing can be compared).
    """
    reply = _readable(arrays)
    for name, got in reply.items():
        if got.dtype.kind in _FLOAT_KINDS and not _all_finite(got):
            raise ValidationError("non-finite", f"array {name!r} contains NaN or infinity", array=name)
    if not mirror and max_norm is None:
        return
    try:
        ref = as_views(reference)
    except (FedgeError, ValueError, TypeError) as exc:  # e.g. Flower's placeholder (stype '')
        raise ValidationError("reference", f"the instruction's arrays cannot be compared: {exc}") from exc
    _check_layout(reply, ref, dtypes=mirror)
    if max_norm is not None:
        _check_norm(reply, ref, max_norm)


class StreamValidator:
    """:func:`validate_reply` for an update read one array at a time (a sealed file, a fold).

    Names, shapes and dtypes are checked up front from ``layout`` (a manifest), then each array
    as it is fed: finiteness, and its part of the update norm, checked against ``max_norm`` by
    :meth:`finish`. The same refusals as :func:`validate_reply`; where a reply has several
    problems, a layout problem is the one reported.
    """

    def __init__(
        self,
        layout: Mapping[str, tuple[np.dtype, tuple[int, ...]]],
        reference: ArrayRecord,
        *,
        max_norm: float | None = None,
        mirror: bool = True,
    ) -> None:
        self._max_norm = max_norm
        self._ref: dict[str, np.ndarray] = {}
        self._squares = 0.0
        if not mirror and max_norm is None:
            return
        try:
            self._ref = as_views(reference)
        except (FedgeError, ValueError, TypeError) as exc:
            raise ValidationError("reference", f"the instruction's arrays cannot be compared: {exc}") from exc
        # Zero-byte stand-ins with each array's shape and dtype, for the one layout check.
        stand_ins = {name: np.broadcast_to(np.empty((), dt), shape) for name, (dt, shape) in layout.items()}
        _check_layout(stand_ins, self._ref, dtypes=mirror)

    def feed(self, name: str, got: np.ndarray) -> None:
        """Check one array of the update (raises :class:`ValidationError`)."""
        if got.dtype.kind not in _FLOAT_KINDS:
            return
        if not _all_finite(got):
            raise ValidationError("non-finite", f"array {name!r} contains NaN or infinity", array=name)
        if self._max_norm is not None:
            self._squares += _squared_distance(got, self._ref[name])

    def finish(self) -> None:
        """The norm bound, once every array was fed."""
        if self._max_norm is not None:
            _bound_norm(math.sqrt(self._squares), self._max_norm)


def _check_layout(reply: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray], dtypes: bool) -> None:
    """Same names and shapes as ``ref`` (and dtypes when ``dtypes``), or a ValidationError."""
    missing, extra = [n for n in ref if n not in reply], [n for n in reply if n not in ref]
    if missing or extra:
        raise ValidationError(
            "names",
            f"arrays differ from the global model: missing {_names(missing)}, unexpected {_names(extra)}",
            array=(missing or extra)[0],
        )
    for name, expected in ref.items():
        got = reply[name]
        if got.shape != expected.shape:
            raise ValidationError(
                "shape", f"array {name!r} has shape {got.shape}, expected {expected.shape}", array=name
            )
        if dtypes and got.dtype != expected.dtype:
            raise ValidationError(
                "dtype", f"array {name!r} has dtype {got.dtype}, expected {expected.dtype}", array=name
            )


def check_freshness(reply_round: int, current_round: int, reply_run: int, current_run: int) -> None:
    """Refuse a reply from another run (``foreign-run``) or another round (``stale-round``).

    A reply for an older round is a late or replayed answer; one for a newer round cannot be
    genuine. Either way it must not be aggregated into the current round.
    """
    if reply_run != current_run:
        raise ValidationError("foreign-run", f"reply belongs to run {reply_run}, not run {current_run}")
    if reply_round != current_round:
        when = "an earlier" if reply_round < current_round else "a later"
        raise ValidationError(
            "stale-round", f"reply is for {when} round ({reply_round}); the current round is {current_round}"
        )


def _readable(arrays: ArrayRecord | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Views of the reply; an array that is not a plain numpy array is a ``dtype`` refusal."""
    if not isinstance(arrays, ArrayRecord):
        return as_views(arrays)
    views = {}
    for name, array in arrays.items():
        try:
            views[name] = array_view(array)
        except ValueError as exc:  # wrong stype, object dtype, garbage or truncated .npy
            raise ValidationError(
                "dtype", f"array {name!r} is not a readable numpy array: {exc}", array=name
            ) from exc
    return views


def _names(names: list[str]) -> str:
    if not names:
        return "none"
    shown = ", ".join(repr(n) for n in names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _all_finite(arr: np.ndarray) -> bool:
    flat = arr.ravel(order="K")  # a view for C- or F-contiguous arrays; order is irrelevant here
    if flat.size <= _BLOCK:
        return bool(np.isfinite(flat).all())
    mask = np.empty(_BLOCK, dtype=bool)
    for start in range(0, flat.size, _BLOCK):
        block = flat[start : start + _BLOCK]
        out = mask[: block.size]
        np.isfinite(block, out=out)
        if not out.all():
            return False
    return True


def update_norm(arrays: ArrayRecord | Mapping[str, np.ndarray], reference: ArrayRecord) -> float:
    """``||arrays - reference||_2`` over the floating arrays (call after :func:`validate_reply`)."""
    return _norm(_readable(arrays), as_views(reference))


def _check_norm(reply: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray], max_norm: float) -> None:
    _bound_norm(_norm(reply, ref), max_norm)


def _bound_norm(norm: float, max_norm: float) -> None:
    if not norm <= max_norm:  # also catches a NaN norm
        raise ValidationError(
            "norm",
            f"update L2 norm {norm:.6g} exceeds the bound {max_norm:.6g}",
            hint="lower the client learning rate/epochs, or raise max_norm if the bound is too tight",
        )


def _norm(reply: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray]) -> float:
    """Streamed ``||reply - ref||_2`` in float64: blocks of ``_BLOCK`` elements, no full-size copy."""
    total = 0.0
    # No bigger than the largest array: a small model's check then touches no fresh pages (a
    # full block is 2 MiB, allocated and faulted in again for every reply).
    largest = max((a.size for a in reply.values() if a.dtype.kind in _FLOAT_KINDS), default=0)
    diff = np.empty(min(_BLOCK, largest), dtype=np.complex128 if _any_complex(reply) else np.float64)
    for name, got in reply.items():
        if got.dtype.kind in _FLOAT_KINDS:
            total += _squared_distance(got, ref[name], diff)
    return math.sqrt(total)


def _squared_distance(got: np.ndarray, ref: np.ndarray, diff: np.ndarray | None = None) -> float:
    """``||got - ref||²`` in float64 (complex128 for complex), in blocks of ``diff`` 's size."""
    if diff is None:
        diff = np.empty(min(_BLOCK, got.size), dtype=np.complex128 if got.dtype.kind == "c" else np.float64)
    total = 0.0
    a, b = got.reshape(-1), ref.reshape(-1)  # same (C) element order; views if C-contiguous
    for start in range(0, a.size, _BLOCK):
        d = diff[: min(_BLOCK, a.size - start)]
        np.subtract(a[start : start + _BLOCK], b[start : start + _BLOCK], out=d, dtype=diff.dtype)
        total += float(np.vdot(d, d).real)
    return total


def _any_complex(arrays: Mapping[str, np.ndarray]) -> bool:
    return any(a.dtype.kind == "c" for a in arrays.values())
