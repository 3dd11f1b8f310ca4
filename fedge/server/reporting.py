"""Progress reports from inside a run's worker to whoever watches the run.

A report reaches the server only through the grid the ServerApp was given: fedge's ``FedgeGrid``
forwards it over the worker's pipe to the run manager (``fedge run logs``, ``fedge run status``);
any other grid (Flower's Ray engine, a stock SuperLink, a test grid without ``report``) drops it.
So a ServerApp never needs to know which engine it runs on, and no process-wide hook is needed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flwr.serverapp import Grid

Reporter = Callable[[str, dict[str, Any]], None]
"""``reporter(kind, data)``: one event (``round-finished``, ``summary``, …) with JSON-serialisable data."""


def quiet(kind: str, data: dict[str, Any]) -> None:
    """The reporter of engines nobody watches through fedge: reports go nowhere."""


def reporter_of(grid: Grid) -> Reporter:
    """``grid.report`` when the grid has one (``FedgeGrid``), else :func:`quiet`."""
    report = getattr(grid, "report", None)
    return report if callable(report) else quiet
