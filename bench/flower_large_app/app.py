"""Stock-Flower twin of ``bench/large_app.py``: a large float32 model, trivial client work.

Imports only ``flwr`` and ``numpy`` (stock Flower loads this file from the FAB as the top-level
module ``app``). The ServerApp is plain ``FedAvg.start(...)``; the subclass only timestamps
``configure_train`` and the end of ``aggregate_train`` for each round's wall time. The ClientApp
adds ``node_id % 1000 + 1`` to each tensor and reports that number as its weight, so after R
rounds every weight is ``R * sum(n*n) / sum(n)``.

Run config: ``model-mb``, ``tensors``, ``num-server-rounds``, ``min-clients``, ``result-path``
(JSON: round wall times, node ids, each tensor's first/min/max value after the last round).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

client_app = ClientApp()
server_app = ServerApp()


def layout(model_mb: float, tensors: int) -> list[int]:
    """Element counts of the ``tensors`` float32 tensors of a ``model_mb`` MB model."""
    total = int(model_mb * 1_000_000) // 4
    return [total // tensors + (1 if i < total % tensors else 0) for i in range(tensors)]


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """Reply with global + node offset, tensor by tensor; weight = node offset."""
    node = context.node_id % 1000 + 1
    received = msg.content.array_records["arrays"]
    out = ArrayRecord()
    for name in list(received.keys()):
        out[name] = Array.from_numpy_ndarray(received[name].numpy() + np.float32(node))
        del received[name]
    metrics = MetricRecord({"num-examples": node})
    return Message(RecordDict({"arrays": out, "metrics": metrics}), reply_to=msg)


class TimedFedAvg(FedAvg):
    """FedAvg that records each round's wall time (configure_train to end of aggregate_train)."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.started: dict[int, float] = {}
        self.seconds: list[float] = []

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.started[server_round] = time.perf_counter()
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        out = super().aggregate_train(server_round, replies)
        self.seconds.append(time.perf_counter() - self.started[server_round])
        return out


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    n = int(cfg["min-clients"])
    sizes = layout(float(cfg["model-mb"]), int(cfg["tensors"]))
    strategy = TimedFedAvg(
        fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n, min_available_nodes=n
    )
    initial = ArrayRecord(
        {f"w{i}": Array.from_numpy_ndarray(np.zeros(size, np.float32)) for i, size in enumerate(sizes)}
    )
    del sizes
    result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=int(cfg["num-server-rounds"]))
    del initial
    final = {}
    for name, array in result.arrays.items():
        values = array.numpy()
        final[name] = {
            "first": float(values[0]),
            "min": float(values.min()),
            "max": float(values.max()),
            "dtype": str(values.dtype),
        }
        del values
    out = {"round_s": strategy.seconds, "node_ids": sorted(grid.get_node_ids()), "final": final}
    if str(cfg["result-path"]):
        path = Path(str(cfg["result-path"]))
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(out))
        tmp.replace(path)
