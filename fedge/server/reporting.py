"""Progress reports from inside a run's worker to whoever watches the run.

The fedge server's run worker installs a reporter that forwards events to the Control service;
elsewhere (Flower's Ray engine, stock SuperLink) reports go nowhere. ServerApps call
:func:`report` and never need to know which engine they run on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Reporter = Callable[[str, dict[str, Any]], None]

_reporter: Reporter | None = None


def set_reporter(reporter: Reporter | None) -> None:
    """Install (or remove, with ``None``) the process-wide reporter."""
    global _reporter
    _reporter = reporter


def report(kind: str, **data: Any) -> None:
    """Send one event (``round-finished``, ``log``, …) with JSON-serialisable data."""
    if _reporter is not None:
        _reporter(kind, data)
