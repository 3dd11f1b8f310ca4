"""StreamingExchange: weighted-mean strategies with O(model) server memory.

Flower's ``Strategy.start`` collects every train reply before ``aggregate_train`` averages them,
so the server holds clients × model bytes at its peak (the failure users hit first with large
models). This train exchange (:mod:`fedge.strategies.exchange`) folds each reply into one
:class:`~fedge.strategies.streaming.WeightedSum`
the moment it arrives (``FedgeGrid.send_and_stream``) and drops it, then hands the
strategy a single reply with the weighted mean. FedAvg of one reply is that reply, so FedAvg,
FedProx, FedAvgM and the FedOpt family produce their usual result — including their server-side
momentum or adaptive step — while the server holds one model and one sum. Error replies pass
through unchanged (they are small) so failures are counted and reported as before.

Strategies that need every update (median, trimmed mean, Krum, Bulyan) do not stream: they keep
Flower's plain exchange and need clients × model memory, as the README says.
"""

from __future__ import annotations

import gc

from flwr.app import ArrayRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp import strategy as fl

from fedge.errors import FedgeError
from fedge.security.seal import SealError
from fedge.server.deferred import DeferredArrays, close_deferred, materialized
from fedge.server.screening import REJECTED
from fedge.strategies.exchange import CONTRIBUTORS, stream, synthetic_reply
from fedge.strategies.secure import check_compatible
from fedge.strategies.streaming import WeightedSum
from fedge.strategies.weights import DEFAULT_MAX_EXAMPLES, weight_problem

#: Models from this size on get a garbage collection before each round's sum is allocated.
LARGE_MODEL = 32 * 1024 * 1024


def _model_bytes(messages: list[Message]) -> int:
    first = next((m for m in messages if m.has_content()), None)
    if first is None:
        return 0
    return sum(len(a.data) for r in first.content.array_records.values() for a in r.values())


def _is_synthetic(reply: Message) -> bool:
    return len(reply.content.array_records) == 1 and any(
        CONTRIBUTORS in record for record in reply.content.metric_records.values()
    )


def _fold(total: WeightedSum, arrays: ArrayRecord, weight: float) -> None:
    """Add one reply's arrays; a deferred one (still in its spool file) tensor by tensor.

    The grid screened a deferred reply in a full pass, which authenticated every chunk; reading
    it again can fail only if its file changed since, and then the run cannot go on with a sum
    that holds part of an update (``WeightedSum.add_arrays`` refuses further use).
    """
    if not isinstance(arrays, DeferredArrays):
        total.add(arrays, weight)
        return
    try:
        total.add_arrays(arrays.layout, arrays.arrays(), weight)
    except SealError as exc:
        raise FedgeError(
            f"a screened update failed authentication when read again from its spool file: {exc}",
            "the server's spool directory was changed while a run read it; check its disk",
        ) from exc
    finally:
        arrays.close()


def can_stream(strategy: fl.Strategy) -> bool:
    """Whether ``strategy``'s aggregate depends on the replies only through their weighted mean."""
    try:
        check_compatible(strategy)
    except FedgeError:
        return False
    return True


class StreamingExchange:
    """Fold train replies as they arrive; the strategy sees one reply with the mean.

    Parameters
    ----------
    strategy : Strategy
        A FedAvg-family strategy (see :func:`can_stream`); its ``weighted_by_key`` and
        ``train_metrics_aggr_fn`` are used exactly as Flower would.
    max_examples : float
        A reply whose weight is not a finite number in ``(0, max_examples]`` becomes an error
        reply (a failed node for the round), never part of the mean.
    """

    def __init__(self, strategy: fl.Strategy, max_examples: float = DEFAULT_MAX_EXAMPLES) -> None:
        if not can_stream(strategy):
            raise FedgeError(
                f"{type(strategy).__name__} needs every update at once and cannot stream",
                "use it without streaming aggregation (fedge does this automatically)",
            )
        assert isinstance(strategy, fl.FedAvg)  # can_stream: a FedAvg-family strategy
        self.strategy = strategy
        self.max_examples = max_examples

    def aggregate_train(
        self, server_round: int, replies: list[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The strategy's ``aggregate_train`` of what :meth:`train` returned, without a copy for FedAvg.

        Flower's FedAvg of the one synthetic reply is that reply's mean, recomputed: one more
        model plus ``np.load`` temporaries at the round's peak, for the same numbers. Plain
        FedAvg gets the mean and Flower's metric aggregation directly; every other strategy
        (server momentum, adaptive steps) runs its own ``aggregate_train``.
        """
        inner = self.strategy
        if type(inner) is not fl.FedAvg:
            return inner.aggregate_train(server_round, replies)
        # Flower's own checks and log line (it raises on inconsistent replies, as FedAvg would).
        valid, _ = inner._check_and_log_replies(replies, is_train=True)
        if len(valid) != 1 or not _is_synthetic(valid[0]):
            return inner.aggregate_train(server_round, replies)
        content = valid[0].content
        arrays = next(iter(content.array_records.values()))
        return arrays, inner.train_metrics_aggr_fn([content], inner.weighted_by_key)

    def train(
        self, grid: Grid, messages: list[Message], server_round: int, timeout: float | None
    ) -> list[Message]:
        inner = self.strategy
        key = inner.weighted_by_key
        if _model_bytes(messages) >= LARGE_MODEL:
            # The last round's Messages (and the global model before it) sit in reference
            # cycles until the cyclic GC runs: free them before a new sum is allocated.
            gc.collect()
        total = WeightedSum()
        metrics: list[RecordDict] = []
        passed: list[Message] = []
        names = ("arrays", "metrics")
        first = ""  # the instruction the synthetic reply answers (any folded client's)
        for reply in stream(grid, messages, timeout, defer=True):
            if reply.has_error() or len(reply.content.array_records) != 1:
                passed.append(materialized(reply))  # Flower's checks report it as usual
                continue
            (name, arrays), (metrics_name, record) = (
                next(iter(reply.content.array_records.items())),
                next(iter(reply.content.metric_records.items()), ("metrics", MetricRecord())),
            )
            problem = weight_problem(reply, self.max_examples, key) if key in record else None
            if problem is not None:
                close_deferred(reply)
                instruction = next(
                    m for m in messages if m.metadata.message_id == reply.metadata.reply_to_message_id
                )
                passed.append(
                    Message(
                        Error(code=REJECTED, reason=f"update rejected (weight): {problem}"),
                        reply_to=instruction,
                    )
                )
                continue
            weight = record.get(key)
            if not isinstance(weight, (int, float)):
                passed.append(materialized(reply))
                continue
            try:
                _fold(total, arrays, float(weight))
            except ValueError:
                passed.append(materialized(reply))  # inconsistent keys/shapes: let Flower's checks say so
                continue
            metrics.append(RecordDict({metrics_name: record}))
            names = (name, metrics_name)
            first = first or reply.metadata.reply_to_message_id
            # The fold holds everything the round needs. Flower's Message objects sit in reference
            # cycles, freed only by the cyclic GC: empty the record now so the tensor bytes go at once.
            arrays.clear()
            del arrays, reply
        if not first:
            return passed
        aggregated = inner.train_metrics_aggr_fn(metrics, key)
        aggregated[key] = total.total_weight
        instruction = next(m for m in messages if m.metadata.message_id == first)
        return [synthetic_reply(instruction, total.result(), aggregated, total.count, names), *passed]
