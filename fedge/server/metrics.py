"""The server's Prometheus series, fed by the Fleet streams and by run events.

Where each number comes from, and why there:

- ``fedge_server_nodes_connected`` and ``fedge_server_runs{state}`` are read at scrape time
  (router sessions; the run store), so they are right after a restart and never drift.
- bytes and stream counts are counted by :class:`fedge.server.fleet.FleetService` per frame
  (protobuf size of each ``EdgeFrame``/``ServerFrame``; gRPC, HTTP/2 and TLS framing excluded).
- rounds, round duration, rejected updates and run failures come from the events every run worker
  reports to the server process (:meth:`on_event`, called by the run manager after it stored
  the event). Update screening happens in the worker, so the worker reports each rejection as an
  ``update-rejected`` event (which also shows in ``fedge run logs``).

Label cardinality stays bounded: no run or node labels (both grow without limit over a server's
life); ``reason`` is a short code from a fixed vocabulary, capped at :data:`MAX_REASONS` values.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import Counter, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from fedge.metrics_http import Exposed
from fedge.server.events import EventKind, RunState
from fedge.server.router import Router
from fedge.server.store import Store

log = logging.getLogger("fedge.server.metrics")

#: Round wall times run from a fraction of a second (tiny models on loopback) to many minutes.
ROUND_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
MAX_REASONS = 32
_REASON = re.compile(r"[a-z][a-z0-9-]{0,31}")


class _Live(Collector):
    """Gauges computed when Prometheus scrapes: connected nodes and runs by state."""

    def __init__(self, router: Router, store: Store) -> None:
        self._router, self._store = router, store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "fedge_server_nodes_connected",
            "Edge devices with an open Fleet stream.",
            value=len(self._router.node_ids()),
        )
        runs = GaugeMetricFamily("fedge_server_runs", "Runs in the store by state.", labels=["state"])
        counts: dict[str, int] = dict.fromkeys(RunState, 0)  # every state, 0 when empty: dashboards see them
        try:
            for row in self._store.runs():
                counts[row.state] = counts.get(row.state, 0) + 1
        except Exception as exc:  # the store is closing: a scrape must not fail the server
            log.debug("runs by state unavailable: %s", exc)
        for state, count in counts.items():
            runs.add_metric([state], count)
        yield runs

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []  # not known without reading the store; registration then skips the name check


class ServerMetrics(Exposed):
    """One server's registry and series; :meth:`serve` exposes them over HTTP."""

    def __init__(self, router: Router, store: Store) -> None:
        super().__init__()
        reg = self.registry
        ProcessCollector(registry=reg)
        PlatformCollector(registry=reg)
        reg.register(_Live(router, store))
        self.connections = Counter(
            "fedge_server_node_connections", "Fleet streams opened by devices.", registry=reg
        )
        self.received_bytes = Counter(
            "fedge_server_fleet_received_bytes", "Bytes of frames received on Fleet streams.", registry=reg
        )
        self.sent_bytes = Counter(
            "fedge_server_fleet_sent_bytes", "Bytes of frames sent on Fleet streams.", registry=reg
        )
        self.rounds = Counter(
            "fedge_server_rounds_completed", "Training rounds completed, over all runs.", registry=reg
        )
        self.round_seconds = Histogram(
            "fedge_server_round_duration_seconds",
            "Wall time of a round: its train instructions sent until its results recorded.",
            buckets=ROUND_BUCKETS,
            registry=reg,
        )
        self.rejected = Counter(
            "fedge_server_updates_rejected",
            "Device replies refused by screening (validation, sealing) by reason.",
            ["reason"],
            registry=reg,
        )
        self.run_failures = Counter("fedge_server_run_failures", "Runs that ended failed.", registry=reg)
        self._lock = threading.Lock()
        self._open: dict[int, float] = {}  # run_id -> monotonic start of its current round
        self._reasons: set[str] = set()

    # -- hooks ------------------------------------------------------------------------------
    def on_event(self, run_id: int, kind: str, data: dict[str, Any]) -> None:
        """A run event as stored by the run manager; never raises (a metric must not hurt a run).

        A round is complete at its ``round-finished`` report (fedge's ServerApp). Apps that do
        not report rounds (any stock Flower app) still send a train batch per round, seen as
        ``round-started``: their round is complete when the next one starts or the run finishes.
        """
        try:
            self._on_event(run_id, kind, data)
        except Exception:
            log.exception("metrics: cannot account event %s of run %s", kind, run_id)

    def _on_event(self, run_id: int, kind: str, data: dict[str, Any]) -> None:
        now = time.monotonic()
        with self._lock:
            if kind == EventKind.ROUND_STARTED:
                self._complete(self._open.pop(run_id, None), now)
                self._open[run_id] = now
            elif kind == EventKind.ROUND_FINISHED and _round(data) > 0:  # round 0: the initial evaluation
                self._complete(self._open.pop(run_id, None), now, counted_without_start=True)
            elif kind == EventKind.RUN_FINISHED:
                self._complete(self._open.pop(run_id, None), now)
            elif kind in (EventKind.RUN_FAILED, EventKind.RUN_STOPPED, EventKind.RUN_RESUMED):
                self._open.pop(run_id, None)  # an unfinished round is not a completed one
        if kind == EventKind.RUN_FAILED:
            self.run_failures.inc()
        elif kind == EventKind.UPDATE_REJECTED:
            self.rejected.labels(self._reason(data.get("reason"))).inc()

    def _complete(self, started: float | None, now: float, counted_without_start: bool = False) -> None:
        if started is not None:
            self.round_seconds.observe(now - started)
        if started is not None or counted_without_start:
            self.rounds.inc()

    def _reason(self, raw: object) -> str:
        reason = raw if isinstance(raw, str) and _REASON.fullmatch(raw) else "other"
        if reason not in self._reasons and len(self._reasons) >= MAX_REASONS:
            return "other"
        self._reasons.add(reason)
        return reason

    # -- exposition -------------------------------------------------------------------------


def _round(data: dict[str, Any]) -> int:
    try:
        return int(data.get("round", 0))
    except (TypeError, ValueError):
        return 0
