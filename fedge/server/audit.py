"""Append-only audit log: one JSON object a line.

Security-relevant events (connects, refusals, protocol violations, enrollments, revocations,
rejected updates, run start/stop) are what an operator must be able to reconstruct after the
fact, so each line is flushed and fsynced as it is written. The server keeps one log for the
fleet (``<state_dir>/audit.jsonl``) and one per run (``runs/<id>/audit.jsonl``).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from fedge.atomic import PRIVATE


class AuditLog:
    """Thread-safe JSON-lines appender."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def write(self, event: str, **fields: Any) -> None:
        """Append ``{"at": …, "event": event, **fields}`` durably."""
        line = json.dumps({"at": time.time(), "event": event, **fields}, default=str) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE)
            try:
                os.write(fd, line.encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
