"""One in-process 100-client round of a 1e7-parameter model; prints the server's peak RSS growth.

Run as a script in a fresh process (``python -m bench.streaming_round [--flower] [--clients N]
[--params D]``)
so ``ru_maxrss`` is this round's peak and nothing else's. The devices are simulated by
:class:`LazyFleet`: it keeps only each instruction's metadata and produces each reply when the
grid asks for the next one, so every byte counted belongs to the server side (FedgeGrid, the
codec, screening, the strategy). ``--flower`` runs Flower's own collect-then-aggregate path for
comparison.
"""

from __future__ import annotations

import json
import resource
import sys

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.app.message import make_message
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from fedge.codec import array_from_numpy, decode_message, encode_message
from fedge.server.grid import FedgeGrid, Outcome, Payload
from fedge.strategies import PlainExchange, StreamingExchange, TrainExchange, run_rounds

RUN_ID = 5
CLIENTS, PARAMS = 100, 10_000_000  # overridden by --clients / --params


class LazyFleet:
    """Grid link whose devices answer one at a time, on demand: global + node id, weight = node id."""

    def __init__(self) -> None:
        self.pending: dict[str, Message] = {}

    def node_ids(self) -> list[int]:
        return list(range(1, CLIENTS + 1))

    def push(self, items: list[tuple[str, int, Payload]], round: int, announcement: bytes) -> None:
        for message_id, _, payload in items:
            message = decode_message(payload if isinstance(payload, bytes) else b"".join(payload))
            self.pending[message_id] = make_message(metadata=message.metadata, content=RecordDict())
            for record in message.content.array_records.values():
                record.clear()  # the device's decoded copy: free it now (Messages sit in cycles)

    def wait(self, message_ids: list[str], timeout: float | None, first: bool = False) -> dict[str, Outcome]:
        message_id = message_ids[0]
        instruction = self.pending.pop(message_id)
        node = instruction.metadata.dst_node_id
        TaskIdentity.node_id = node
        arrays = ArrayRecord({"w": array_from_numpy(np.full(PARAMS, node, np.float32))})
        reply = Message(
            RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": node})}),
            reply_to=instruction,
        )
        TaskIdentity.node_id = SUPERLINK_NODE_ID
        data = encode_message(reply)
        arrays.clear()  # the device's copy (Messages sit in reference cycles; free it now)
        return {message_id: Outcome(data=data)}


def main() -> None:
    global CLIENTS, PARAMS
    if "--clients" in sys.argv:
        CLIENTS = int(sys.argv[sys.argv.index("--clients") + 1])
    if "--params" in sys.argv:
        PARAMS = int(sys.argv[sys.argv.index("--params") + 1])
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, RUN_ID, SUPERLINK_NODE_ID
    flower = "--flower" in sys.argv
    grid = FedgeGrid(LazyFleet(), Run.create_empty(RUN_ID))
    initial = ArrayRecord({"w": Array(np.zeros(PARAMS, np.float32))})
    inner = FedAvg(fraction_evaluate=0.0, min_train_nodes=CLIENTS, min_available_nodes=CLIENTS)
    exchange: TrainExchange = PlainExchange() if flower else StreamingExchange(inner)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = run_rounds(
        grid,
        inner,
        exchange,
        initial,
        range(1, 2),
        timeout=3600,
        train_config=ConfigRecord(),
        evaluate_config=ConfigRecord(),
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    weights = np.arange(1, CLIENTS + 1, dtype=np.float64)
    expected = float((weights * weights).sum() / weights.sum())  # Σ w·node / Σ w with w = node
    value = float(result["w"].numpy()[0])
    print(
        json.dumps(
            {"model_bytes": PARAMS * 4, "peak_growth": peak - before, "value": value, "expected": expected}
        )
    )


if __name__ == "__main__":
    main()
