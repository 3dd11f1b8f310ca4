"""The names of run events and run states, as one vocabulary for the server, the worker and the CLI.

A run event travels from the run worker (or the run manager) over the pipe into SQLite, out
through ``StreamEvents`` to ``fedge run logs`` and into the Prometheus counters; a run state is
stored in ``fedge.db`` and shown by ``fedge run list``. Each side used to spell these as string
literals, so a typo was a silently ignored event. The values are the on-disk and on-the-wire
strings and must not change (``StrEnum`` members compare equal to them, so stored rows and old
clients keep working). See docs/architecture.md, "Run events and states".
"""

from __future__ import annotations

from enum import StrEnum


class EventKind(StrEnum):
    """What happened in a run (``events.kind`` in ``fedge.db``, ``RunEvent.kind`` on the wire)."""

    RUN_STARTED = "run-started"
    RUN_RESUMED = "run-resumed"
    RUN_FINISHED = "run-finished"
    RUN_FAILED = "run-failed"
    RUN_STOPPED = "run-stopped"
    ROUND_STARTED = "round-started"
    ROUND_FINISHED = "round-finished"
    SUMMARY = "summary"
    UPDATE_REJECTED = "update-rejected"
    MODEL_EXPORTED = "model-exported"
    EXPORT_FAILED = "export-failed"


class RunState(StrEnum):
    """Where a run is in its life (``runs.state`` in ``fedge.db``, ``RunStatus.state`` on the wire)."""

    PENDING = "pending"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    STOPPED = "stopped"
    INTERRUPTED = "interrupted"


#: States a run never leaves on its own (only `fedge run resume` moves it on).
TERMINAL_STATES = frozenset({RunState.FINISHED, RunState.FAILED, RunState.STOPPED, RunState.INTERRUPTED})
#: States `fedge run resume` continues from (from the last committed round).
RESUMABLE_STATES = frozenset({RunState.INTERRUPTED, RunState.FAILED, RunState.STOPPED})
#: The event that ends a run, and the state it leaves the run in.
TERMINAL_EVENTS: dict[str, RunState] = {
    EventKind.RUN_FINISHED: RunState.FINISHED,
    EventKind.RUN_FAILED: RunState.FAILED,
    EventKind.RUN_STOPPED: RunState.STOPPED,
}
