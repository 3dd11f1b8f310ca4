"""How much one device may weigh and move: bounded weights and an adaptive update-norm bound.

Why here, per reply, in the run worker: a device that is enrolled seals and signs its replies
correctly, so transport checks pass; what it can still do is *claim* a huge ``num-examples``
(its weight in every weighted mean) or send an update a million times larger than anyone's.
Either makes the aggregate its own. Both are decided on each reply as it arrives, before any
strategy sees it, so streaming aggregation (which folds and drops each reply) is covered as
well as Flower's plain exchange. A refusal is the screen's: an audited error reply that counts as
a failed node for the round, never a failed run.

The adaptive bound follows adaptive clipping (Andrew et al., 2021) in spirit: the bound is a
multiple of a robust statistic (the median) of the norms of updates already accepted in this
run, so it tracks the task without a hand-set constant. Its limits, stated in the README: until
:data:`WARMUP` updates were accepted it is a multiple of the global model's own norm; a
sign-flipped or otherwise poisoned update *of normal norm* passes it (robust strategies —
median, trimmed mean, Krum — are the answer there); and a patient attacker cannot inflate it
while its updates are fewer than half of the window (the median ignores them).
"""

from __future__ import annotations

import math
import statistics
import threading
from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message

from fedge.codec import array_view
from fedge.errors import FedgeError
from fedge.security.validate import update_norm
from fedge.server.run_settings import RunSettings
from fedge.server.screening import Audit, ReplyScreen
from fedge.strategies.weights import weight_problem

#: Accepted update norms the adaptive bound is the median of (the newest ones).
WINDOW = 64
#: Accepted updates needed before the median replaces the global model's norm as the scale.
WARMUP = 3

_DEFAULTS = RunSettings()


def model_norm(reference: ArrayRecord) -> float:
    """``||reference||_2`` over its floating arrays (the scale before any update was accepted)."""
    total = 0.0
    for array in reference.values():
        view = array_view(array)
        if view.dtype.kind in "fc":
            total += float(np.vdot(view.reshape(-1), view.reshape(-1)).real)
    return math.sqrt(total)


class NormHistory:
    """The adaptive bound: ``factor`` × median of the last :data:`WINDOW` accepted update norms."""

    def __init__(self, factor: float) -> None:
        self.factor = factor
        self._norms: deque[float] = deque(maxlen=WINDOW)
        self._lock = threading.Lock()  # replies can be screened from several grid threads

    def bound(self, reference: ArrayRecord) -> float | None:
        """The bound for the next update (``None`` while there is no scale: a zero global model)."""
        with self._lock:
            scale = statistics.median(self._norms) if len(self._norms) >= WARMUP else None
        if scale is None:
            scale = model_norm(reference)
        return self.factor * scale if scale > 0 else None

    def accept(self, norm: float) -> None:
        """Record the norm of an update that passed (refused ones never move the bound)."""
        with self._lock:
            self._norms.append(norm)


class BoundedScreen(ReplyScreen):
    """:class:`ReplyScreen` plus bounded weights and (optionally) the adaptive norm bound."""

    def __init__(
        self,
        run_id: int,
        audit: Audit,
        max_norm: float | None = None,
        *,
        mirror: bool = True,
        max_examples: float = _DEFAULTS.max_examples,
        norm_bound_factor: float = 0.0,
    ) -> None:
        super().__init__(run_id, audit, max_norm, mirror=mirror)
        self._max_examples = max_examples
        # A fixed bound (max-update-norm) replaces the adaptive one.
        self._history = NormHistory(norm_bound_factor) if norm_bound_factor > 0 and max_norm is None else None

    def check(self, reply: Message, instruction: Message, reference: ArrayRecord | None) -> Message:
        """The base checks, then weight and (for train replies) norm; rejections are audited."""
        screened = super().check(reply, instruction, reference)
        if screened is not reply or reference is None or not reply.has_content():
            return screened  # refused already, or no plaintext model to judge it against
        problem = weight_problem(reply, self._max_examples)
        if problem is not None:
            return self.reject(instruction, "weight", problem)
        if self._history is None or instruction.metadata.message_type.split(".")[0] != "train":
            return reply
        bound = self._history.bound(reference)
        for record in reply.content.array_records.values():
            try:
                norm = update_norm(record, reference)
            except (ValueError, FedgeError) as exc:  # a reply shaped unlike the model (a foreign app)
                return self.reject(instruction, "malformed", f"no update norm: {exc}")
            if bound is not None and not norm <= bound:
                detail = f"update L2 norm {norm:.6g} exceeds the adaptive bound {bound:.6g}"
                return self.reject(instruction, "norm", detail)
            self._history.accept(norm)
        return reply


def bounded_screen(
    run_id: int,
    audit: Audit,
    run_config: Mapping[str, Any],
    max_norm: float | None,
    own_app: bool,
    *,
    mirror: bool = True,
) -> BoundedScreen:
    """The screen of a run: fedge's own app reads :class:`RunSettings` (adaptive bound on by
    default); any other app gets the weight cap, and the adaptive bound if its run config sets
    ``norm-bound-factor``."""
    if own_app:
        settings = RunSettings.from_run_config(run_config, run_id)
        max_examples, factor = float(settings.max_examples), settings.norm_bound_factor
    else:
        max_examples = _number(run_config, "max-examples", _DEFAULTS.max_examples)
        factor = _number(run_config, "norm-bound-factor", 0.0)
    return BoundedScreen(
        run_id, audit, max_norm, mirror=mirror, max_examples=max_examples, norm_bound_factor=factor
    )


def _number(run_config: Mapping[str, Any], key: str, default: float) -> float:
    value = run_config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise FedgeError(
            f"'{key}' in run config must be a non-negative number, got {value!r}", f"fix '{key}'"
        )
    return float(value)
