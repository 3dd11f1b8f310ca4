"""Append-only audit log: one JSON object a line.

Security-relevant events (connects, refusals, protocol violations, enrollments, revocations,
rejected updates, run start/stop) are what an operator must be able to reconstruct after the
fact, so each line is flushed and fsynced as it is written. The server keeps one log for the
fleet (``<state_dir>/audit.jsonl``) and one per run (``runs/<id>/audit.jsonl``).

Why bounded: what is audited often comes from a peer (a device name, a reason, a version), and a
log that records whatever it is handed lets one request with a 3 MB name add 3 MB, and one device
repeating a frame add an fsynced line per frame. So every field is cut to :data:`MAX_FIELD`
characters, and each (event, identity) pair may write :data:`BURST` lines per
:data:`WINDOW` seconds: the first line over the budget says ``audit-suppressed``, the rest are
only counted, and the pair's next line after the window carries ``suppressed: N``. Identity is
the device (``node``/``node_id``) or, before there is one, the peer's address.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedge.atomic import PRIVATE

#: Characters kept of any one field (longer ones end with a note of how much was cut).
MAX_FIELD = 256
#: Lines one (event, identity) pair may write per window.
BURST = 32
#: Seconds of a rate-limit window.
WINDOW = 60.0
#: (event, identity) pairs tracked at most (least recently written forgotten first).
MAX_KEYS = 4096


@dataclass
class _Budget:
    started: float
    written: int = 0
    suppressed: int = 0


def bounded(value: Any) -> Any:
    """``value`` as it goes into a line: numbers as they are, anything else at most MAX_FIELD chars."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, (list, tuple, dict)):
        text = json.dumps(value, default=str)
        if len(text) <= MAX_FIELD:
            return value
    else:
        text = str(value)
    if len(text) <= MAX_FIELD:
        return text
    return f"{text[:MAX_FIELD]}…[{len(text) - MAX_FIELD} more chars]"


def identity_of(fields: dict[str, Any]) -> str:
    """Who a line is about: the device name or id, else the peer address without its port."""
    for key in ("node", "node_id"):
        if fields.get(key) not in (None, ""):
            return f"{key}={str(fields[key])[:MAX_FIELD]}"
    peer = str(fields.get("peer", ""))[:MAX_FIELD]
    return "peer=" + (peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else peer)


class AuditLog:
    """Thread-safe, bounded, rate-limited JSON-lines appender."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._clock = clock
        self._budgets: OrderedDict[tuple[str, str], _Budget] = OrderedDict()

    def write(self, event: str, **fields: Any) -> None:
        """Append ``{"at": …, "event": event, **fields}`` durably (within the pair's budget)."""
        line = {k: bounded(v) for k, v in fields.items()}
        with self._lock:
            note = self._admit(event, line)
            if note is None:
                return
            for entry in note:
                self._append({"at": time.time(), **entry})

    def _admit(self, event: str, line: dict[str, Any]) -> list[dict[str, Any]] | None:
        """The lines to write for this event (None: suppressed, only counted). Caller holds the lock."""
        key = (event, identity_of(line))
        now = self._clock()
        budget = self._budgets.pop(key, None)
        if budget is None or now - budget.started >= WINDOW:
            carried = budget.suppressed if budget is not None else 0
            budget = _Budget(started=now)
            if carried:
                line = {**line, "suppressed": carried}
        self._budgets[key] = budget
        while len(self._budgets) > MAX_KEYS:
            self._budgets.popitem(last=False)
        if budget.written < BURST:
            budget.written += 1
            return [{"event": event, **line}]
        budget.suppressed += 1
        if budget.suppressed > 1:
            return None
        who: dict[str, Any] = {k: line[k] for k in ("node", "node_id", "peer") if k in line}
        return [{"event": "audit-suppressed", "of": event, **who, "window": WINDOW}]

    def _append(self, entry: dict[str, Any]) -> None:
        data = (json.dumps(entry, default=str) + "\n").encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
