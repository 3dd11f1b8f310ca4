"""Base for strategies that take over the train phase of each round and hand Flower one aggregate.

Why: Flower's ``Strategy.start`` sends the train messages with one ``grid.send_and_receive`` and
passes *all* replies to ``aggregate_train``. Secure aggregation needs several exchanges per
round (keys, shares, masked inputs, unmasking) and streaming aggregation must fold each reply as
it arrives instead of holding them all. Both fit the same shape: keep Flower's round loop and the
wrapped strategy unchanged, give ``start`` a grid whose train exchange is done by the wrapper, and
let that exchange return **one synthetic reply** carrying the aggregate. The wrapped weighted-mean
strategy (FedAvg, FedProx, FedAvgM, FedAdam, FedYogi, FedAdagrad) then aggregates a single reply —
itself — and applies its own server-side step (momentum, adaptive moments) on top.

The synthetic reply's ``MetricRecord`` carries :data:`CONTRIBUTORS` (how many clients the
aggregate really stands for) so that round bookkeeping counts clients, not replies.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy
from flwr.supercore.run import Run

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


def stream(grid: Grid, messages: Iterable[Message], timeout: float | None) -> Iterator[Message]:
    """Replies one by one as they arrive when the grid can stream (fedge's), else all at the end."""
    streaming = getattr(grid, "send_and_stream", None)
    if streaming is not None:
        yield from streaming(messages, timeout=timeout)
    else:
        yield from grid.send_and_receive(messages, timeout=timeout)


class RoundDriver(Strategy):
    """A Flower ``Strategy`` that wraps another and performs each round's train exchange itself.

    Parameters
    ----------
    strategy : Strategy
        The wrapped strategy; its ``configure_*``/``aggregate_*`` and attributes are used as is.
    """

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes the wrapper lacks (min_train_nodes, weighted_by_key, …).
        if name == "strategy":
            raise AttributeError(name)
        return getattr(self.strategy, name)

    @abstractmethod
    def train_round(self, grid: Grid, messages: list[Message], timeout: float | None) -> list[Message]:
        """Run one round's train exchange for ``messages``; return the replies for ``aggregate_train``."""

    def summary(self) -> None:
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.strategy.aggregate_train(server_round, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> Result:
        """Flower's own round loop, on a grid whose train exchange is :meth:`train_round`."""
        return super().start(
            _TrainExchange(grid, self),
            initial_arrays,
            num_rounds=num_rounds,
            timeout=timeout,
            train_config=train_config,
            evaluate_config=evaluate_config,
            evaluate_fn=evaluate_fn,
        )


def synthetic_reply(
    instruction: Message, arrays: ArrayRecord, metrics: MetricRecord, count: int, names: tuple[str, str]
) -> Message:
    """One reply standing for ``count`` clients: ``arrays`` under ``names[0]``, metrics under ``names[1]``."""
    metrics[CONTRIBUTORS] = count
    return Message(RecordDict({names[0]: arrays, names[1]: metrics}), reply_to=instruction)


class _TrainExchange(Grid):
    """The grid handed to ``Strategy.start``: train exchanges go to the driver, the rest through."""

    def __init__(self, grid: Grid, driver: RoundDriver) -> None:
        self._grid = grid
        self._driver = driver

    def set_run(self, run: Run) -> None:
        self._grid.set_run(run)

    @property
    def run(self) -> Run:
        return self._grid.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self._grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        batch = list(messages)
        if batch and all(m.metadata.message_type == MessageType.TRAIN for m in batch):
            return self._driver.train_round(self._grid, batch, timeout)
        return self._grid.send_and_receive(batch, timeout=timeout)
