"""Screening of device replies before any ServerApp sees them.

Transport-level, so it protects every Flower app run on fedge, not only fedge's own: a reply
that holds NaN/Inf, moves the model further than the configured norm bound, claims another run
or — when the app declares that replies mirror instructions (:data:`MIRROR_KEY`) — whose arrays
do not match what the server sent (names, shapes, dtypes) is turned into an error reply — a
failure for that round, never aggregated — and written to the run's audit log. Whatever goes
wrong while screening is such a rejection too: a reply can fail a round, never the run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flwr.app import ArrayRecord, Error, Message

from fedge.security.seal import SealError
from fedge.security.secagg.wire import RECORD as SECAGG_RECORD
from fedge.security.validate import StreamValidator, ValidationError, validate_reply
from fedge.server.deferred import DeferredArrays, close_deferred

#: Error code of a reply rejected by screening (Flower's own codes are small integers).
REJECTED = 600

#: Run-config key by which an app declares that every reply's arrays have the names, shapes and
#: dtypes of its instruction's (README, "Any Flower app"). fedge's own ServerApp is held to it
#: unless it is set to false; any other app only when it sets it to true.
MIRROR_KEY = "replies-mirror-instructions"

Audit = Callable[..., None]


def reference_of(instruction: Message) -> ArrayRecord | None:
    """The (single) ArrayRecord an instruction carried: what a reply's arrays must match."""
    if not instruction.has_content() or SECAGG_RECORD in instruction.content.config_records:
        # A secure-aggregation train reply is a masked vector, checked by the strategy itself.
        return None
    records = list(instruction.content.array_records.values())
    return records[0] if len(records) == 1 else None


class ReplyScreen:
    """Checks replies against their instructions; rejects with a reason and an audit line."""

    def __init__(
        self, run_id: int, audit: Audit, max_norm: float | None = None, *, mirror: bool = True
    ) -> None:
        self._run_id = run_id
        self._audit = audit
        self._max_norm = max_norm
        self._mirror = mirror

    def check(self, reply: Message, instruction: Message, reference: ArrayRecord | None) -> Message:
        """Return ``reply`` if it passes, else an error reply that says why."""
        try:
            reason, detail = self._problem(reply, instruction, reference)
        except Exception as exc:  # a reply the checks themselves choke on is refused, not fatal
            reason, detail = "malformed", f"reply could not be screened: {type(exc).__name__}: {exc}"
        if reason is None:
            return reply
        close_deferred(reply)
        return self.reject(instruction, reason, detail)

    def reject(self, instruction: Message, reason: str, detail: str) -> Message:
        """The error reply (and audit line) for a refused update."""
        meta = instruction.metadata
        self._audit(
            "update-rejected",
            node_id=meta.dst_node_id,
            reason=reason,
            detail=detail,
            message_type=meta.message_type,
        )
        return Message(
            Error(code=REJECTED, reason=f"update rejected ({reason}): {detail}"), reply_to=instruction
        )

    def _problem(
        self, reply: Message, instruction: Message, reference: ArrayRecord | None
    ) -> tuple[str | None, str]:
        meta = reply.metadata
        if meta.run_id != self._run_id:
            return "foreign-run", f"reply for run {meta.run_id}, this is run {self._run_id}"
        if meta.reply_to_message_id != instruction.metadata.message_id:
            return "mismatch", "reply does not answer the instruction it was routed to"
        if not reply.has_content():
            return None, ""
        for record in reply.content.array_records.values():
            try:
                if isinstance(record, DeferredArrays):
                    self._read_through(record, reference)
                elif reference is not None:
                    validate_reply(record, reference, max_norm=self._max_norm, mirror=self._mirror)
            except ValidationError as exc:
                return str(exc.reason), exc.detail
            except SealError as exc:
                return exc.reason, exc.message
        return None, ""

    def _read_through(self, record: DeferredArrays, reference: ArrayRecord | None) -> None:
        """One full pass over a deferred update: authenticates every chunk, screens each array.

        Made even with nothing to screen against: a fold must never start on an update whose
        later chunks fail authentication.
        """
        validator = (
            None
            if reference is None
            else StreamValidator(record.layout, reference, max_norm=self._max_norm, mirror=self._mirror)
        )
        for name, array in record.arrays():
            if validator is not None:
                validator.feed(name, array)
            del array
        if validator is not None:
            validator.finish()


def max_norm_from(run_config: dict[str, Any]) -> float | None:
    """``max-update-norm`` from the run config (absent or ≤ 0: no bound)."""
    value = float(run_config.get("max-update-norm", 0) or 0)
    return value if value > 0 else None


def mirror_from(run_config: dict[str, Any], own_app: bool) -> bool:
    """Whether replies must mirror instructions: :data:`MIRROR_KEY`, else ``own_app``."""
    value = run_config.get(MIRROR_KEY, own_app)
    return value if isinstance(value, bool) else str(value).strip().lower() in ("true", "1", "yes")
