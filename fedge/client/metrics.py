"""The edge daemon's Prometheus series.

Fed by the daemon's stream loop (bytes, welcomes), by the runtime around each ClientApp call
(tasks, their duration) and read at scrape time (connected, the active model), so a scrape
never waits on a running task. Labels stay bounded: ``type`` is the Flower message category
(``train``, ``evaluate``, ``query``, ``system``, else ``other``), never the full message type a
custom app may invent; ``outcome`` is ``ok``, ``error`` (error reply: the app raised or refused)
or ``undecodable`` (the instruction's bytes could not be decoded).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import InfoMetricFamily
from prometheus_client.registry import Collector

from fedge.metrics_http import Exposed

if TYPE_CHECKING:
    from .models import ModelStore

log = logging.getLogger("fedge.client.metrics")

MESSAGE_TYPES = ("train", "evaluate", "query", "system")
OUTCOMES = ("ok", "error", "undecodable")
#: ClientApp calls run from milliseconds (evaluate on a tiny model) to many minutes (training).
TASK_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


def message_category(message_type: str) -> str:
    """``train`` for ``train`` and ``train.custom``; ``other`` for what Flower does not define."""
    head = message_type.split(".", 1)[0]
    return head if head in MESSAGE_TYPES else "other"


class _ActiveModel(Collector):
    """``fedge_edge_active_model_info{version, pinned}``, read from the model store at scrape."""

    def __init__(self, models: ModelStore) -> None:
        self._models = models

    def collect(self) -> Iterator[InfoMetricFamily]:
        family = InfoMetricFamily(
            "fedge_edge_active_model", "The model bundle this device serves (absent: none yet)."
        )
        version, pinned = self._models.active()
        if version:
            family.add_metric([], {"version": version, "pinned": "true" if pinned else "false"})
        yield family

    def describe(self) -> list[InfoMetricFamily]:
        return []


class EdgeMetrics(Exposed):
    """One daemon's registry and series; :meth:`serve` exposes them over HTTP.

    Parameters
    ----------
    connected : Callable[[], bool]
        True while a welcomed stream is open (read at scrape time).
    models : ModelStore
        The device's model store, for the active model version.
    """

    def __init__(self, connected: Callable[[], bool], models: ModelStore) -> None:
        super().__init__()
        reg = self.registry
        ProcessCollector(registry=reg)
        PlatformCollector(registry=reg)
        reg.register(_ActiveModel(models))
        gauge = Gauge("fedge_edge_connected", "1 while a Fleet stream to the server is open.", registry=reg)
        gauge.set_function(lambda: 1.0 if connected() else 0.0)
        self.tasks = Counter(
            "fedge_edge_tasks",
            "Instructions handled, by message type and outcome.",
            ["type", "outcome"],
            registry=reg,
        )
        self.task_seconds = Histogram(
            "fedge_edge_task_duration_seconds",
            "Duration of the ClientApp call by message type (type=train: local training time).",
            ["type"],
            buckets=TASK_BUCKETS,
            registry=reg,
        )
        for kind in (*MESSAGE_TYPES, "other"):  # every series exists from the start, at 0
            self.task_seconds.labels(kind)
            for outcome in OUTCOMES:
                self.tasks.labels(kind, outcome)
        self.sent_bytes = Counter(
            "fedge_edge_fleet_sent_bytes", "Bytes of frames sent on the Fleet stream.", registry=reg
        )
        self.received_bytes = Counter(
            "fedge_edge_fleet_received_bytes", "Bytes of frames received on the Fleet stream.", registry=reg
        )
        self.reconnects = Counter(
            "fedge_edge_reconnects", "Streams welcomed after the first one (reconnections).", registry=reg
        )

    def task(self, message_type: str, outcome: str, seconds: float) -> None:
        """One instruction handled (called by the runtime after the ClientApp returned)."""
        kind = message_category(message_type)
        self.tasks.labels(kind, outcome if outcome in OUTCOMES else "error").inc()
        if outcome != "undecodable":
            self.task_seconds.labels(kind).observe(seconds)

    def welcomed(self, count: int) -> None:
        """The daemon's ``count``-th stream was welcomed; every one after the first is a reconnect."""
        if count > 1:
            self.reconnects.inc()
