"""The PKI directory's JSON state files (private): locking, atomic read-modify-write, timestamps.

``tokens.json``, ``issued.json`` and ``revoked.json`` are rewritten whole, atomically (temp file +
rename, :mod:`fedge.atomic`), so a reader never sees a torn file. Writers serialize on a lock that is
both a per-directory ``threading.Lock`` (threads of one server) and an ``flock`` on ``<dir>/.lock``
(the ``fedge pki`` CLI creating a token while the server consumes one must not lose either update).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fedge.atomic import write_bytes
from fedge.errors import FedgeError

try:  # POSIX; elsewhere the in-process lock is all there is
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

_LOCKS: dict[Path, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    """Hold the PKI directory's write lock (threads of this process and other processes)."""
    key = root.resolve()
    with _LOCKS_GUARD:
        lock = _LOCKS.setdefault(key, threading.Lock())
    with lock:
        if fcntl is None:  # pragma: no cover
            yield
            return
        fd = os.open(key / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock


def read_json(path: Path) -> dict[str, Any]:
    """A state file's content; ``{}`` if it does not exist yet."""
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise FedgeError(f"cannot read {path}: {exc}", "restore the file from backup") from None
    if not isinstance(data, dict):
        raise FedgeError(f"{path} is not a fedge state file", "restore the file from backup")
    return data


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Replace a state file atomically (0600: token hashes and the fleet roster are not public)."""
    write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode(), 0o600)


def iso(when: dt.datetime) -> str:
    """A timestamp as stored in state files: ISO 8601, UTC, seconds."""
    return when.astimezone(dt.UTC).isoformat(timespec="seconds")


def parse_iso(text: str) -> dt.datetime:
    """Inverse of :func:`iso`."""
    return dt.datetime.fromisoformat(text).astimezone(dt.UTC)
