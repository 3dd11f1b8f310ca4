"""fedge's round loop: Flower's ``Strategy.start`` made explicit about the round number.

Why not ``Strategy.start``: it counts rounds from 1 every time it is called, leaves every
message's ``group_id`` empty and owns the train exchange. A resumed run then has to add an offset
in every hook, the transport has to guess the round from how many train batches it saw, and
secure or streaming aggregation has to hijack the grid. Here ``server_round`` is the loop
variable: it goes explicitly into every strategy call and is stamped once into every message's
``group_id``; the grid, the exchanges and the sealing only read it (docs/architecture.md, "One
round").

Each round, as in Flower: configure train → exchange → aggregate train → configure evaluate →
exchange → aggregate evaluate → the observer's ``finished`` (central evaluation, checkpoint,
commit). Flower's strategies (``configure_*``, ``aggregate_*``, ``summary``) are used unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from enum import StrEnum

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.exception import AggregationError, InconsistentMessageReplies
from flwr.serverapp.strategy import Strategy

from fedge.codec import array_from_numpy
from fedge.errors import FedgeError
from fedge.strategies.exchange import TrainExchange

log = logging.getLogger(__name__)


class Phase(StrEnum):
    """The two client-side phases of a round (the names are the metrics' key prefixes)."""

    TRAIN = "train"
    EVALUATE = "eval"


class RoundObserver:
    """What the loop tells whoever records a run; every hook defaults to doing nothing.

    fedge's ServerApp records metrics, checkpoints, commits and reports in one subclass
    (:class:`fedge.server.recorder.RoundRecorder`); a benchmark app uses this base as is.
    """

    def sent(self, phase: Phase, server_round: int, messages: list[Message]) -> None:
        """``messages`` of ``phase`` are about to go out."""

    def received(self, phase: Phase, server_round: int, replies: list[Message]) -> list[Message]:
        """The replies of ``phase``, in the order the strategy should aggregate them.

        May raise :class:`FedgeError` to fail the run (e.g. too few valid updates).
        """
        return replies

    def aggregated(
        self, phase: Phase, server_round: int, arrays: ArrayRecord | None, metrics: MetricRecord | None
    ) -> None:
        """The strategy aggregated ``phase`` (``arrays`` is always ``None`` for evaluation)."""

    def finished(self, server_round: int, arrays: ArrayRecord) -> None:
        """Round ``server_round`` is complete; ``arrays`` is its global model."""


def stamped(messages: Iterable[Message], server_round: int) -> list[Message]:
    """``messages`` with ``group_id`` set to ``server_round``: the one place a round is written."""
    batch = list(messages)
    for msg in batch:
        msg.metadata.group_id = str(server_round)
    return batch


def keep_dtypes(aggregated: ArrayRecord, previous: ArrayRecord) -> ArrayRecord:
    """``aggregated`` with every array in the dtype the previous global model held it in.

    Flower's weighted mean turns integer arrays into float64 (``array * weight``); batch norm's
    ``num_batches_tracked`` counter is one. Sent on as float64, the next round's replies — int64
    again, from the clients' own models — no longer match what the server sent and screening
    refuses them all. Integers are rounded (a mean count: never read, see
    :mod:`fedge.tasks.nets.common`); arrays already in their dtype are left untouched (no copy).
    """
    for name, array in list(aggregated.items()):
        before = previous.get(name)
        if before is None or before.dtype == array.dtype:
            continue
        values = array.numpy()
        target = np.dtype(before.dtype)
        if np.issubdtype(target, np.integer):
            values = np.rint(values)
        aggregated[name] = array_from_numpy(values.astype(target))
    return aggregated


def run_rounds(
    grid: Grid,
    strategy: Strategy,
    exchange: TrainExchange,
    arrays: ArrayRecord,
    rounds: Iterable[int],
    *,
    timeout: float,
    train_config: ConfigRecord,
    evaluate_config: ConfigRecord,
    observer: RoundObserver | None = None,
) -> ArrayRecord:
    """Run ``strategy`` for each server round in ``rounds``; returns the final global model."""
    observer = observer or RoundObserver()
    strategy.summary()
    for server_round in rounds:
        log.info("[ROUND %s]", server_round)
        train = stamped(strategy.configure_train(server_round, arrays, train_config, grid), server_round)
        observer.sent(Phase.TRAIN, server_round, train)
        replies = exchange.train(grid, train, server_round, timeout)
        replies = observer.received(Phase.TRAIN, server_round, replies)
        try:
            # An exchange may aggregate its own replies (the streaming one: without a copy).
            aggregate = getattr(exchange, "aggregate_train", strategy.aggregate_train)
            new_arrays, train_metrics = aggregate(server_round, replies)
        except (InconsistentMessageReplies, AggregationError) as exc:
            raise FedgeError(
                f"round {server_round}: cannot aggregate the updates: {exc}",
                "every train reply must carry one ArrayRecord with the same keys and one "
                "MetricRecord with 'num-examples'",
            ) from None
        if new_arrays is not None:
            new_arrays = keep_dtypes(new_arrays, arrays)
        observer.aggregated(Phase.TRAIN, server_round, new_arrays, train_metrics)
        if new_arrays is not None:
            arrays = new_arrays

        evaluate = stamped(
            strategy.configure_evaluate(server_round, arrays, evaluate_config, grid), server_round
        )
        observer.sent(Phase.EVALUATE, server_round, evaluate)
        replies = list(grid.send_and_receive(evaluate, timeout=timeout))
        replies = observer.received(Phase.EVALUATE, server_round, replies)
        observer.aggregated(
            Phase.EVALUATE, server_round, None, strategy.aggregate_evaluate(server_round, replies)
        )
        observer.finished(server_round, arrays)
    return arrays
