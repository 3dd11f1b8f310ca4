"""SecureExchange: SecAgg+ for Flower's Message-API weighted-mean strategies.

Why a train exchange and not a strategy of its own: the server-side optimisers (FedAvgM
momentum, FedAdam/FedYogi/FedAdagrad moments, FedProx's client term) only ever need the weighted
*mean* of the updates, which is exactly what secure aggregation reveals. So this exchange
(:mod:`fedge.strategies.exchange`) runs the SecAgg+ stages for each round's train messages
(:mod:`fedge.security.secagg`) and hands the strategy a single reply holding the mean; the
strategy aggregates and steps as usual. Strategies that must see individual updates (median,
trimmed mean, Krum, Bulyan, q-FedAvg) cannot run on a sum and are refused up front.

Per round, on the nodes the strategy sampled::

    advertise  (query.secagg)  each client: two fresh X25519 public keys
    share      (query.secagg)  each client: Shamir shares of its secrets, encrypted per neighbour
    mask       (train)         each client: trains unchanged, replies with its masked vector
    unmask     (query.secagg)  each survivor: shares that remove the masks of the others

Masked vectors are folded into one ``uint32`` sum as they stream in; no individual update ever
exists on the server. A client lost at any stage is covered as long as every needed secret still
has ``t`` shares; otherwise the round fails with the node and the reason.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp import strategy as fl

from fedge.errors import FedgeError
from fedge.security.secagg import SecAggError, ServerSession, dequantize, resolve_params, round_tag
from fedge.security.secagg.wire import (
    ADVERTISE,
    MASK,
    MASKED,
    MESSAGE_TYPE,
    RECORD,
    SHARE,
    UNMASK,
    SecAggSettings,
    flatten,
    pairs,
    size_of,
    unflatten,
)
from fedge.strategies.exchange import stream, synthetic_reply

# Weighted-mean strategies: their aggregate depends on the replies only through the mean.
_MEAN_BASED = (fl.FedAvg,)
# Subclasses of FedAvg that need every individual update (or are not arrays at all).
_NEEDS_INDIVIDUAL = (
    fl.FedMedian,
    fl.FedTrimmedAvg,
    fl.MultiKrum,
    fl.Bulyan,
    fl.QFedAvg,
    fl.FedXgbBagging,
    fl.FedXgbCyclic,
)


def check_compatible(strategy: fl.Strategy) -> None:
    """Refuse strategies that cannot work on a sum of updates, with the reason."""
    name = type(strategy).__name__
    if isinstance(strategy, _NEEDS_INDIVIDUAL):
        raise FedgeError(
            f"secure aggregation cannot be used with {name}: it needs every client's individual update, "
            "and secure aggregation reveals only their sum",
            "use fedavg, fedprox, fedavgm, fedadam, fedyogi or fedadagrad with --secagg, "
            f"or run {name} without --secagg",
        )
    if not isinstance(strategy, _MEAN_BASED):
        raise FedgeError(
            f"secure aggregation works with weighted-mean strategies; {name} is not one",
            "wrap a FedAvg-family strategy (fedavg, fedprox, fedavgm, fedadam, fedyogi, fedadagrad)",
        )


@dataclass
class _Round:
    """Bookkeeping of one secure round: instructions by node, why nodes dropped, client metrics."""

    instructions: dict[int, Message]
    dropped: dict[int, str] = field(default_factory=dict)
    metrics: list[tuple[int, MetricRecord]] = field(default_factory=list)


class SecureExchange:
    """The train exchange of a weighted-mean Message-API strategy that reveals only the aggregate.

    Parameters
    ----------
    strategy : Strategy
        The run's strategy: FedAvg, FedProx, FedAvgM, FedAdam, FedYogi, FedAdagrad (or a
        subclass); checked here, used as is by the round loop.
    settings : SecAggSettings
        Graph degree, threshold, quantization, weighting and distributed-DP parameters.
    min_clients : int
        Clients per round at least; checked against the protocol's rules before any round.
    """

    def __init__(self, strategy: fl.Strategy, settings: SecAggSettings, min_clients: int) -> None:
        check_compatible(strategy)
        self.settings = settings
        resolve_params(min_clients, settings.k, settings.t, settings.clip, settings.quant_bits)

    def train(
        self, grid: Grid, messages: list[Message], server_round: int, timeout: float | None
    ) -> list[Message]:
        deadline = None if timeout is None else time.monotonic() + timeout
        nodes = [m.metadata.dst_node_id for m in messages]
        params = resolve_params(
            len(nodes), self.settings.k, self.settings.t, self.settings.clip, self.settings.quant_bits
        )
        tag = round_tag(grid.run.run_id, server_round)
        server = ServerSession(params, nodes, tag, os.urandom(16))
        state = _Round({m.metadata.dst_node_id: m for m in messages})
        label = f"secure aggregation, round {server_round}"

        # advertise-keys
        request = self.settings.to_config(len(nodes), ADVERTISE)
        request["round"] = server_round
        self._stage(
            grid,
            state,
            server_round,
            nodes,
            lambda _n: request,
            lambda node, record: server.receive_keys(node, _blob(record, "c-pk"), _blob(record, "s-pk")),
            deadline,
        )
        live = self._require(state, params.t, label, "advertise-keys")

        # share-keys
        def share_request(node: int) -> ConfigRecord:
            keys = server.keys_for(node)
            return ConfigRecord(
                {
                    "stage": SHARE,
                    "nodes": list(keys),
                    "c-pks": [k[0] for k in keys.values()],
                    "s-pks": [k[1] for k in keys.values()],
                }
            )

        self._stage(
            grid,
            state,
            server_round,
            live,
            share_request,
            lambda node, record: server.receive_shares(node, pairs(record, "nodes", "ciphertexts")),
            deadline,
        )
        live = self._require(state, params.t, label, "share-keys")

        # masked input: the strategy's own train messages, with the forwarded shares added
        reference = _arrays_of(messages[0])
        expected = size_of(reference) + 1
        train = []
        for node in live:
            shares = server.shares_for(node)
            msg = state.instructions[node]
            # Strategies may share one RecordDict between messages: each node gets its own.
            forwarded = ConfigRecord(
                {"stage": MASK, "srcs": list(shares), "ciphertexts": list(shares.values())}
            )
            content = RecordDict({**dict(msg.content.items()), RECORD: forwarded})
            meta = msg.metadata
            state.instructions[node] = grid.create_message(
                content, meta.message_type, node, str(server_round), meta.ttl
            )
            train.append(state.instructions[node])
        for reply in stream(grid, train, _left(deadline)):
            node = reply.metadata.src_node_id
            if reply.has_error():
                state.dropped[node] = reply.error.reason or "error"
                continue
            masked = _masked_vector(reply, expected)
            if isinstance(masked, str):
                state.dropped[node] = masked
                continue
            try:
                server.receive_masked(node, masked)
            except SecAggError as exc:  # all-or-nothing: the sum is untouched, the node is out
                state.dropped[node] = exc.message
                continue
            state.metrics.extend((node, m) for m in reply.content.metric_records.values())
            del masked, reply  # nothing of a client's contribution outlives the fold
        # Unmask only a sum of enough clients: t for the protocol, and with distributed DP the
        # number of noise shares that add up to the accounted noise.
        needed = max(params.t, self.settings.min_contributors if self.settings.dp.enabled else 0)
        self._require(state, needed, label, "masked-input", server.survivors)
        survivors, gone = server.unmask_request()

        # unmask
        request_unmask = ConfigRecord({"stage": UNMASK, "survivors": survivors, "dropped": gone})
        self._stage(
            grid,
            state,
            server_round,
            survivors,
            lambda _n: request_unmask,
            lambda node, record: server.receive_unmask(node, pairs(record, "nodes", "shares")),
            deadline,
        )
        try:
            total, survivors = server.finish()
        except SecAggError as exc:
            raise FedgeError(f"{label}: {exc.message}{_why(state)}", exc.hint) from None
        return [self._aggregate(total, survivors, reference, state, params.clip, params.quant_bits)]

    def _stage(
        self,
        grid: Grid,
        state: _Round,
        server_round: int,
        nodes: Iterable[int],
        record_for: Callable[[int], ConfigRecord],
        take: Callable[[int, ConfigRecord], None],
        deadline: float | None,
    ) -> None:
        """One setup stage: a ``query.secagg`` message per node, each answer given to ``take``.

        A node whose answer is an error, or that ``take`` refuses (malformed, late, duplicate:
        the session records nothing of a refused answer), counts as dropped from then on.
        """
        messages = [
            grid.create_message(RecordDict({RECORD: record_for(node)}), MESSAGE_TYPE, node, str(server_round))
            for node in nodes
        ]
        for reply in stream(grid, messages, _left(deadline)):
            node = reply.metadata.src_node_id
            if reply.has_error():
                state.dropped[node] = reply.error.reason or "error"
            elif RECORD not in reply.content.config_records:
                state.dropped[node] = "reply without the secagg record"
            else:
                try:
                    take(node, reply.content.config_records[RECORD])
                except (SecAggError, ValueError, TypeError) as exc:
                    state.dropped[node] = getattr(exc, "message", str(exc))

    def _require(
        self, state: _Round, needed: int, label: str, stage: str, done: list[int] | None = None
    ) -> list[int]:
        """Nodes still in the protocol; fail the round clearly when fewer than ``needed`` remain."""
        live = done if done is not None else [n for n in state.instructions if n not in state.dropped]
        if len(live) < needed:
            raise FedgeError(
                f"{label}: only {len(live)} of {len(state.instructions)} clients completed {stage}, "
                f"{needed} are needed to unmask{_why(state)}",
                "start more edge daemons, raise --min-clients, or lower --secagg-t",
            )
        return live

    def _aggregate(
        self,
        total: np.ndarray,
        survivors: list[int],
        reference: ArrayRecord,
        state: _Round,
        clip: float,
        bits: int,
    ) -> Message:
        """Dequantize the unmasked sum into the weighted mean and wrap it as one reply."""
        vector = dequantize(total, len(survivors), clip, bits)
        weight = float(vector[-1])
        if weight <= 0:
            raise FedgeError(
                f"secure aggregation: the survivors' total weight is {weight:.3g}",
                "check that clients report 'num-examples' > 0 in their train metrics",
            )
        mean = vector[:-1]
        mean /= weight
        mean += flatten(reference)
        arrays = unflatten(mean, reference)
        metrics = _mean_metrics(state.metrics, set(survivors))
        metrics["secagg-dropouts"] = len(state.instructions) - len(survivors)
        first = state.instructions[survivors[0]]
        names = (_array_name(first), "metrics")
        return synthetic_reply(first, arrays, metrics, len(survivors), names)


def _number(value: object) -> float:
    return float(value) if isinstance(value, (int, float)) else 0.0


def _blob(record: ConfigRecord, key: str) -> bytes:
    value = record.get(key, b"")
    if not isinstance(value, bytes):
        raise SecAggError(f"reply field '{key}' is not bytes", "update the edge daemon")
    return value


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _why(state: _Round, limit: int = 3) -> str:
    items = [f"node {n}: {reason.strip()[:160]}" for n, reason in list(state.dropped.items())[:limit]]
    return f" (lost: {'; '.join(items)})" if items else ""


def _arrays_of(message: Message) -> ArrayRecord:
    records = list(message.content.array_records.values())
    if len(records) != 1:
        raise FedgeError(
            f"secure aggregation needs exactly one ArrayRecord in each train message, got {len(records)}",
            "send the global model as a single ArrayRecord (Flower's strategies do)",
        )
    return records[0]


def _array_name(message: Message) -> str:
    return next(iter(message.content.array_records))


def _masked_vector(reply: Message, expected: int) -> np.ndarray | str:
    """The reply's masked vector, or why it is unusable (that client then counts as dropped)."""
    record = reply.content.array_records.get(RECORD)
    if record is None or MASKED not in record:
        return "reply carries no masked vector (is the client running fedge's secagg mod?)"
    vector = record[MASKED].numpy()
    if vector.dtype != np.uint32 or vector.ndim != 1 or vector.size != expected:
        return f"masked vector {vector.dtype}{list(vector.shape)} does not match uint32[{expected}]"
    return vector


def _mean_metrics(metrics: list[tuple[int, MetricRecord]], survivors: set[int]) -> MetricRecord:
    """Clients' train metrics averaged by ``num-examples`` (Flower's default), survivors only."""
    rows = [(n, m) for n, m in metrics if n in survivors]
    weights = {n: _number(m.get("num-examples", 1.0)) for n, m in rows}
    total = sum(weights.values()) or 1.0
    out = MetricRecord({"num-examples": int(sum(weights.values()))})
    keys = {k for _, m in rows for k in m if k != "num-examples"}
    for key in sorted(keys):
        values = [(weights[n], _number(m[key])) for n, m in rows if isinstance(m.get(key), (int, float))]
        if values:
            out[key] = sum(w * v for w, v in values) / total
    return out
