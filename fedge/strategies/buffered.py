"""Asynchronous buffered aggregation (FedBuff, Nguyen et al., 2022): versions instead of rounds.

Why: a synchronous round waits for its slowest sampled device, so one device ten times slower
makes every round ten times longer. Here no device waits for another. Every connected device is
sent the newest model *version* the moment it is idle; the server folds each update as it
arrives and publishes version ``v + 1`` after ``buffer`` (K) updates. The loop sits beside the
synchronous one (:mod:`fedge.strategies.loop`) and records through the same observer, so
``metrics.jsonl``, checkpoints, commits, resume and export work per version (a version is
numbered where a round would be).

What a version is. Device ``i`` trained on version ``v_i`` and returns ``x_i``; its staleness is
``τ_i = v - v_i`` (``v`` the newest version). Its delta ``Δ_i = x_i - x(v_i)`` is taken against
the model it trained on (kept for the last ``max-staleness`` versions) and folded into one
:class:`~fedge.strategies.streaming.WeightedSum` with weight ``n_i · s(τ_i)``, where ``n_i`` is its
``num-examples`` and

    s(τ) = 1 / √(1 + τ)        (:func:`staleness_weight`, FedBuff's choice)

so an update one version old counts 71 %, three versions old 50 %. After K updates:

    x(v + 1) = x(v) + Σ n_i s(τ_i) Δ_i / Σ n_i

Dividing by ``Σ n_i`` (not ``Σ n_i s(τ_i)``) is what makes staleness down-weight: K fresh updates
give FedAvg's step, K stale ones a shorter step in the same direction. An update with
``τ > max-staleness`` is rejected (audited as ``stale`` by the grid's screen, counted in the
version's ``stale-rejected``) and never folded.

A device trains once per version. fedge's ClientApp seeds training from (seed, version, node):
the same device trained twice on the same version would return the same update, counted twice.
A device that answered therefore waits for the next version; every idle device gets it at once.

Everything per reply before this loop sees it is the grid's: opening sealed updates (bound to
the version the device was sent), screening (names, shapes, finite, weight, the adaptive norm
bound against the model the device trained on). Secure aggregation needs a cohort fixed before
training and is refused in async mode (:class:`fedge.server.run_settings.RunSettings`).
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import MessageType
from flwr.serverapp import Grid
from flwr.serverapp import strategy as fl

from fedge.codec import array_from_numpy, as_views
from fedge.errors import FedgeError
from fedge.server.screening import REJECTED
from fedge.strategies.loop import Phase, RoundObserver, keep_dtypes
from fedge.strategies.streaming import WeightedSum
from fedge.strategies.weights import weight_problem

log = logging.getLogger(__name__)

#: Longest a single wait for replies lasts: newly connected devices are picked up this often.
POLL_S = 1.0


def staleness_weight(tau: int) -> float:
    """FedBuff's staleness discount ``1/√(1+τ)`` of an update ``tau`` versions old."""
    return 1.0 / math.sqrt(1.0 + max(0, tau))


@runtime_checkable
class StreamingGrid(Protocol):
    """The push-and-pull primitives of :class:`fedge.server.grid.FedgeGrid` this loop runs on."""

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]: ...

    def pull_first(self, message_ids: Iterable[str], timeout: float | None) -> list[Message]: ...

    def abandon(self, message_ids: Iterable[str]) -> None: ...

    def reject(self, instruction: Message, reason: str, detail: str) -> Message: ...

    def get_node_ids(self) -> Iterable[int]: ...

    def connected_nodes(self) -> list[int]: ...


@dataclass
class _Sent:
    node: int
    version: int
    instruction: Message


@dataclass
class _Buffer:
    """Updates folded towards the next version, and what happened since the last one."""

    total: WeightedSum = field(default_factory=WeightedSum)
    examples: float = 0.0
    metrics: list[RecordDict] = field(default_factory=list)
    staleness: list[int] = field(default_factory=list)
    stale_rejected: int = 0
    failures: int = 0
    rejected: int = 0


class BufferedLoop:
    """FedBuff over a :class:`StreamingGrid`; see the module docstring for what it computes.

    Parameters
    ----------
    strategy : FedAvg
        Only its ``weighted_by_key`` and ``train_metrics_aggr_fn`` are used (Flower's own).
    buffer : int
        Updates per version (K).
    max_staleness : int
        Updates trained on a version more than this many versions old are rejected (S).
    min_nodes : int
        Connected devices the loop waits for before the first version goes out.
    max_examples : float
        Largest weight a reply may claim (as the streaming exchange checks).
    """

    def __init__(
        self, strategy: fl.FedAvg, buffer: int, max_staleness: int, min_nodes: int, max_examples: float
    ) -> None:
        self.strategy = strategy
        self.buffer = buffer
        self.max_staleness = max_staleness
        self.min_nodes = min_nodes
        self.max_examples = max_examples

    def run(
        self,
        grid: Grid,
        arrays: ArrayRecord,
        start: int,
        last: int,
        *,
        timeout: float,
        train_config: ConfigRecord,
        observer: RoundObserver | None = None,
    ) -> ArrayRecord:
        """Publish versions ``start + 1 … last`` starting from ``arrays`` (version ``start``)."""
        if not isinstance(grid, StreamingGrid):
            raise FedgeError(
                f"--mode async needs fedge's grid (push one device at a time, pull each reply as "
                f"it arrives); this engine's {type(grid).__name__} has no such primitives",
                "run on fedge's engine (`fedge run start`, or `fedge simulate --engine fedge`)",
            )
        observer = observer or RoundObserver()
        self.strategy.summary()
        version = start
        models = {version: arrays}  # the versions an accepted update may have trained on
        inflight: dict[str, _Sent] = {}
        done_with: dict[int, int] = {}  # node -> newest version it trained on (or failed on)
        failed: set[int] = set()  # nodes whose last instruction failed
        buf = _Buffer()
        last_progress = time.monotonic()
        self._wait_for_nodes(grid)
        try:
            while version < last:
                busy = {sent.node for sent in inflight.values()}
                idle = [n for n in grid.connected_nodes() if n not in busy and done_with.get(n, -1) < version]
                if idle:
                    self._send(grid, idle, models[version], version, train_config, inflight)
                if not inflight:
                    # Every device answered this version and none is busy, yet the buffer is not
                    # full: those that failed (e.g. reconnected mid-training) try this version
                    # again; a run whose devices keep failing ends at the timeout below.
                    for node in failed:
                        done_with.pop(node, None)
                    failed.clear()
                    time.sleep(0.1)
                for reply in grid.pull_first(list(inflight), POLL_S if inflight else 0.0):
                    sent = inflight.pop(reply.metadata.reply_to_message_id, None)
                    if sent is None:
                        continue
                    done_with[sent.node] = max(done_with.get(sent.node, -1), sent.version)
                    if self._fold(grid, reply, sent, version, models, buf):
                        last_progress = time.monotonic()
                    elif reply.has_error():
                        failed.add(sent.node)
                    if buf.total.count < self.buffer:
                        continue
                    version += 1
                    models[version] = self._publish(models[version - 1], buf, version, observer)
                    for old in [v for v in models if v < version - self.max_staleness]:
                        del models[old]
                    buf = _Buffer()
                    failed.clear()
                    if version >= last:
                        break
                if time.monotonic() - last_progress > timeout:
                    raise FedgeError(
                        f"version {version + 1}: no update accepted for {timeout:.0f} s "
                        f"({buf.total.count} of {self.buffer} buffered, {buf.failures} failed, "
                        f"{buf.rejected} rejected, {buf.stale_rejected} too stale)",
                        "check the daemons (`fedge nodes list`), raise --max-staleness, or lower --buffer",
                    )
        finally:
            grid.abandon(list(inflight))
        return models[version]

    def _wait_for_nodes(self, grid: StreamingGrid) -> None:
        """Block until ``min_nodes`` devices are connected (fedge's grid fails a run that waits too long)."""
        while len(list(grid.get_node_ids())) < self.min_nodes:
            time.sleep(0.2)

    def _send(
        self,
        grid: StreamingGrid,
        nodes: list[int],
        model: ArrayRecord,
        version: int,
        train_config: ConfigRecord,
        inflight: dict[str, _Sent],
    ) -> None:
        """Version ``version`` to each of ``nodes``, stamped with it (``group_id``: what sealing binds)."""
        config = ConfigRecord({**train_config, "server-round": version})
        batch = [
            Message(
                RecordDict({self.strategy.arrayrecord_key: model, self.strategy.configrecord_key: config}),
                dst_node_id=node,
                message_type=MessageType.TRAIN,
                group_id=str(version),
            )
            for node in nodes
        ]
        for message_id, node, msg in zip(grid.push_messages(batch), nodes, batch, strict=True):
            inflight[message_id] = _Sent(node, version, msg)

    def _fold(
        self,
        grid: StreamingGrid,
        reply: Message,
        sent: _Sent,
        version: int,
        models: dict[int, ArrayRecord],
        buf: _Buffer,
    ) -> bool:
        """Fold one reply into ``buf``; ``False`` when it failed or was refused (then counted)."""
        if reply.has_error():
            rejected = reply.error.code == REJECTED
            buf.rejected += rejected
            buf.failures += not rejected
            return False
        tau = version - sent.version
        if tau > self.max_staleness or sent.version not in models:
            detail = (
                f"trained on version {sent.version}, {tau} versions behind {version} "
                f"(max-staleness {self.max_staleness})"
            )
            grid.reject(sent.instruction, "stale", detail)
            buf.stale_rejected += 1
            return False
        key = self.strategy.weighted_by_key
        problem = weight_problem(reply, self.max_examples, key)
        records = reply.content.array_records
        metrics = next(iter(reply.content.metric_records.values()), MetricRecord())
        weight = metrics.get(key)
        if problem or len(records) != 1 or isinstance(weight, bool) or not isinstance(weight, (int, float)):
            grid.reject(
                sent.instruction, "malformed", problem or f"a train reply needs one ArrayRecord and '{key}'"
            )
            buf.rejected += 1
            return False
        base = as_views(models[sent.version])
        update = as_views(next(iter(records.values())))
        if update.keys() != base.keys():
            grid.reject(sent.instruction, "malformed", "the update's arrays differ from the model's")
            buf.rejected += 1
            return False
        delta = {name: np.subtract(update[name], base[name]) for name in base}
        buf.total.add(delta, float(weight) * staleness_weight(tau))
        buf.examples += float(weight)
        buf.staleness.append(tau)
        buf.metrics.append(RecordDict({"metrics": metrics}))
        return True

    def _publish(
        self, current: ArrayRecord, buf: _Buffer, version: int, observer: RoundObserver
    ) -> ArrayRecord:
        """``x(v) + Σ n s Δ / Σ n`` as version ``version``, recorded by ``observer``."""
        discount = buf.total.total_weight / buf.examples  # Σ n s / Σ n: 1 when nothing was stale
        step = buf.total.result()
        base = as_views(current)
        new = ArrayRecord()
        for name, delta in step.items():
            moved = base[name] + discount * delta.numpy()
            new[name] = array_from_numpy(moved.astype(np.result_type(base[name].dtype, moved.dtype)))
        new = keep_dtypes(new, current)
        metrics = self.strategy.train_metrics_aggr_fn(buf.metrics, self.strategy.weighted_by_key)
        metrics.update(
            {
                "version": version,
                "updates": buf.total.count,
                "staleness-mean": statistics.fmean(buf.staleness),
                "staleness-max": max(buf.staleness),
                "stale-rejected": buf.stale_rejected,
                "train-failures": buf.failures,
                "train-rejected": buf.rejected,
            }
        )
        log.info("[VERSION %s] %d updates, staleness %s", version, buf.total.count, buf.staleness)
        observer.aggregated(Phase.TRAIN, version, new, metrics)
        observer.finished(version, new)
        return new
