"""A round's train exchange: how the train messages go out and what ``aggregate_train`` gets back.

Why pluggable: Flower's ``Strategy.start`` sends the train messages with one
``grid.send_and_receive`` and passes *all* replies to ``aggregate_train``. Secure aggregation
needs several exchanges per round (keys, shares, masked inputs, unmasking) and streaming
aggregation must fold each reply as it arrives instead of holding them all. Both fit one shape:
the round loop (:mod:`fedge.strategies.loop`) and the strategy stay unchanged, and the exchange,
chosen once per run, returns **one synthetic reply** carrying the aggregate. The weighted-mean
strategy (FedAvg, FedProx, FedAvgM, FedAdam, FedYogi, FedAdagrad) then aggregates a single reply —
itself — and applies its own server-side step (momentum, adaptive moments) on top.

The synthetic reply's ``MetricRecord`` carries :data:`CONTRIBUTORS` (how many clients the
aggregate really stands for) so that round bookkeeping counts clients, not replies.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol

from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

#: MetricRecord key of a synthetic reply: number of clients folded into it.
CONTRIBUTORS = "fedge-contributors"


def contributors(reply: Message) -> int:
    """How many client updates ``reply`` stands for (1 for an ordinary reply, 0 for an error)."""
    if reply.has_error():
        return 0
    for record in reply.content.metric_records.values():
        value = record.get(CONTRIBUTORS)
        if isinstance(value, (int, float)):
            return int(value)
    return 1


def stream(
    grid: Grid, messages: Iterable[Message], timeout: float | None, *, defer: bool = False
) -> Iterator[Message]:
    """Replies one by one as they arrive when the grid can stream (fedge's), else all at the end.

    ``defer``: fedge's grid may leave a large sealed reply's arrays in its spool file
    (:mod:`fedge.server.deferred`); only for a consumer that handles them.
    """
    streaming = getattr(grid, "send_and_stream", None)
    if streaming is not None:
        options = {"defer": True} if defer else {}  # a grid of another make may not take it
        yield from streaming(messages, timeout=timeout, **options)
    else:
        yield from grid.send_and_receive(messages, timeout=timeout)


def synthetic_reply(
    instruction: Message, arrays: ArrayRecord, metrics: MetricRecord, count: int, names: tuple[str, str]
) -> Message:
    """One reply standing for ``count`` clients: ``arrays`` under ``names[0]``, metrics under ``names[1]``."""
    metrics[CONTRIBUTORS] = count
    return Message(RecordDict({names[0]: arrays, names[1]: metrics}), reply_to=instruction)


class TrainExchange(Protocol):
    """Sends one round's train ``messages`` and returns the replies ``aggregate_train`` sees."""

    def train(
        self, grid: Grid, messages: list[Message], server_round: int, timeout: float | None
    ) -> list[Message]: ...


class PlainExchange:
    """Flower's exchange: every train reply, as received, at the end of the round."""

    def train(
        self, grid: Grid, messages: list[Message], server_round: int, timeout: float | None
    ) -> list[Message]:
        return list(grid.send_and_receive(messages, timeout=timeout))
