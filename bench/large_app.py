"""A Flower app whose model is large and whose work is trivial: the memory path, alone.

What ``bench/large_model.py`` and ``tests/e2e/test_large_model.py`` run on real daemons. The
ServerApp is Flower's ``FedAvg`` on fedge's round loop with streaming aggregation (one running
sum, :class:`fedge.strategies.StreamingExchange`); the ClientApp adds a node-specific constant
to each tensor, one tensor at a time, so the only memory a process needs beyond the messages
themselves is one tensor. Whatever else a process holds at its peak is a copy made on the way
(transport, sealing, codec, fold): what these runs measure.

Run config: ``model-mb`` (float32 megabytes, split over ``tensors`` equal tensors),
``num-server-rounds``, ``min-clients``, ``result-path`` (JSON: each round's wall time and the
final value of every tensor's first element, which the caller checks against the exact mean).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedge.codec import array_from_numpy, array_view
from fedge.strategies import Phase, RoundObserver, StreamingExchange, run_rounds

client_app = ClientApp()
server_app = ServerApp()


def layout(model_mb: float, tensors: int) -> list[int]:
    """Element counts of the ``tensors`` float32 tensors of a ``model_mb`` MB model."""
    total = int(model_mb * 1_000_000) // 4
    return [total // tensors + (1 if i < total % tensors else 0) for i in range(tensors)]


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """Reply with global + node id, built tensor by tensor; weight = node id."""
    node = context.node_id % 1000 + 1
    received = msg.content.array_records["arrays"]
    out = ArrayRecord()
    for name in list(received.keys()):
        update = array_view(received[name]) + np.float32(node)
        del received[name]  # the instruction's tensor goes as its update is made
        out[name] = array_from_numpy(update)
        del update
    metrics = MetricRecord({"num-examples": node})
    return Message(RecordDict({"arrays": out, "metrics": metrics}), reply_to=msg)


class RoundClock(RoundObserver):
    """Wall time of each round, from its first instruction to its end."""

    def __init__(self) -> None:
        self.started: dict[int, float] = {}
        self.seconds: list[float] = []

    def sent(self, phase: Phase, server_round: int, messages: list[Message]) -> None:
        self.started.setdefault(server_round, time.perf_counter())

    def finished(self, server_round: int, arrays: ArrayRecord) -> None:
        self.seconds.append(time.perf_counter() - self.started[server_round])


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    n = int(cfg["min-clients"])
    sizes = layout(float(cfg["model-mb"]), int(cfg.get("tensors", 8)))
    clock = RoundClock()
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n, min_available_nodes=n)
    final = run_rounds(
        grid,
        strategy,
        StreamingExchange(strategy),
        # Not kept under a name here: the round loop drops each global model once replaced.
        ArrayRecord({f"w{i}": array_from_numpy(np.zeros(size, np.float32)) for i, size in enumerate(sizes)}),
        range(1, int(cfg["num-server-rounds"]) + 1),
        timeout=3600.0,
        train_config=ConfigRecord(),
        evaluate_config=ConfigRecord(),
        observer=clock,
    )
    firsts = {name: float(array_view(array)[0]) for name, array in final.items()}
    Path(str(cfg["result-path"])).write_text(json.dumps({"round_s": clock.seconds, "first": firsts}))
