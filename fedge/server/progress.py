"""Per-round progress of any ServerApp, as the grid sees it: replies, failures, rejections, metrics.

fedge's own ServerApp records its rounds itself (:mod:`fedge.server.recorder`); a stock Flower app
reports nothing, yet every message it exchanges crosses :class:`fedge.server.grid.FedgeGrid`. So
the grid tells a :class:`Progress` what it sent and what came back, and it keeps one row per round:
the instruction's ``group_id`` (Flower's legacy workflows stamp the round number there), or one
row per exchange (one pushed batch) when an app sets none. A row holds, per message kind (``train``,
``evaluate``, ``query``, …), the replies, the failures, the rejections by screening, and the
example-weighted mean of every numeric metric the replies carried. A row is complete when the app
moves on to another round (or the run ends); :meth:`Progress.close` completes the rest.

The tally also answers the question a user asks first when nothing worked: did *any* reply of the
run get through, and if not, why not (:meth:`Progress.verdict`).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flwr.app import Message

from fedge.server.screening import REJECTED

#: Metric names Flower uses for a reply's number of examples (Message API, legacy compat).
WEIGHT_KEYS = ("num-examples", "num_examples")

Row = dict[str, Any]


@dataclass
class _Kind:
    """One message kind's tally within a round."""

    replies: int = 0
    failures: int = 0
    rejected: int = 0
    weights: dict[str, float] = field(default_factory=dict)
    sums: dict[str, float] = field(default_factory=dict)


@dataclass
class _Round:
    number: int
    group: str
    kinds: dict[str, _Kind] = field(default_factory=dict)
    done: bool = False

    def row(self) -> Row:
        row: Row = {"round": self.number, "group": self.group}
        for kind, tally in self.kinds.items():
            row[f"{kind}-replies"] = tally.replies
            row[f"{kind}-failures"] = tally.failures
            row[f"{kind}-rejected"] = tally.rejected
            for name, total in tally.sums.items():
                row[f"{kind}-{name}"] = total / tally.weights[name]
        return row


class Progress:
    """Thread-safe tally of a run's exchanges; ``on_round(row)`` gets each completed round."""

    def __init__(self, on_round: Callable[[Row], None] | None = None) -> None:
        self._on_round = on_round
        self._lock = threading.Lock()
        self._rounds: dict[str, _Round] = {}
        self._current = ""
        self._exchanges = 0
        self._key_of: dict[str, str] = {}  # message_id -> round key
        self._usable = 0
        self._unusable: Counter[str] = Counter()

    def sent(self, messages: list[Message]) -> None:
        """A batch the app pushed (message ids assigned): opens its round, completes the previous."""
        if not messages:
            return
        group = next((m.metadata.group_id for m in messages if m.metadata.group_id), "")
        completed: list[Row] = []
        with self._lock:
            if group:
                key = f"group:{group}"
            else:
                self._exchanges += 1
                key = f"exchange:{self._exchanges}"
            if key != self._current:
                completed = [r.row() for r in self._rounds.values() if not r.done]
                for r in self._rounds.values():
                    r.done = True
                self._current = key
            if key not in self._rounds:
                number = int(group) if group.isdigit() else len(self._rounds) + 1
                self._rounds[key] = _Round(number, group or "exchange")
            self._rounds[key].done = False
            for msg in messages:
                self._key_of[msg.metadata.message_id] = key
        self._emit(completed)

    def received(self, instruction: Message, reply: Message) -> None:
        """One reply (an error reply for a failure or rejection) to ``instruction``."""
        kind = instruction.metadata.message_type.split(".")[0] or "message"
        with self._lock:
            key = self._key_of.pop(instruction.metadata.message_id, None)
            if key is None:
                return
            tally = self._rounds[key].kinds.setdefault(kind, _Kind())
            if reply.has_error():
                rejected = reply.error.code == REJECTED
                tally.rejected += rejected
                tally.failures += not rejected
                self._unusable[(reply.error.reason or "error").strip()[:200]] += 1
                return
            tally.replies += 1
            self._usable += 1
            _add_metrics(tally, reply)

    def close(self) -> None:
        """The run ended: complete every open round."""
        with self._lock:
            completed = [r.row() for r in self._rounds.values() if not r.done]
            for r in self._rounds.values():
                r.done = True
        self._emit(completed)

    def verdict(self) -> str:
        """Why the run must count as failed — every reply it got was unusable — or ``""``."""
        with self._lock:
            if self._usable or not self._unusable:
                return ""
            total = sum(self._unusable.values())
            reasons = "; ".join(f"{n}× {reason}" for reason, n in self._unusable.most_common(3))
        return f"none of the run's {total} replies was usable: {reasons}"

    def _emit(self, rows: list[Row]) -> None:
        if self._on_round is not None:
            for row in rows:
                self._on_round(row)


def _add_metrics(tally: _Kind, reply: Message) -> None:
    """Fold a reply's numeric metrics into ``tally``, weighted by its number of examples.

    Metrics are the values of its MetricRecords and, for Flower's legacy compat replies, of its
    ``fitres.metrics``/``evaluateres.metrics`` ConfigRecords.
    """
    if not reply.has_content():
        return
    content = reply.content
    records: list[Mapping[str, Any]] = [*content.metric_records.values()]
    records += [r for name, r in content.config_records.items() if name.endswith(".metrics")]
    values: dict[str, float] = {}
    weight = 1.0
    for record in records:
        for name, value in record.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if name in WEIGHT_KEYS:
                weight = float(value)
            else:
                values[name] = float(value)
    if weight <= 0:
        return
    for name, value in values.items():
        tally.sums[name] = tally.sums.get(name, 0.0) + weight * value
        tally.weights[name] = tally.weights.get(name, 0.0) + weight
