"""A Flower app whose clients keep a copy of exactly what they sent, so a test can search for it.

Each client's update is high-entropy (seeded random float32), so finding any 32-byte slice of it
in a file can only mean that the update itself was written there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

SIZE = 4096

client_app = ClientApp()
server_app = ServerApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    seed = int(context.node_config.get("partition-id", 0)) + 1000 * int(msg.content["config"]["server-round"])
    update = np.random.default_rng(seed).normal(size=SIZE).astype(np.float32)
    Path(str(context.node_config["probe-dir"]), f"update-{seed}.bin").write_bytes(update.tobytes())
    content = RecordDict(
        {"arrays": ArrayRecord({"w": Array(update)}), "metrics": MetricRecord({"num-examples": 1})}
    )
    return Message(content, reply_to=msg)


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    strategy = FedAvg(fraction_evaluate=0.0, min_train_nodes=2, min_available_nodes=2)
    initial = ArrayRecord({"w": Array(np.zeros(SIZE, np.float32))})
    strategy.start(grid=grid, initial_arrays=initial, num_rounds=2, train_config=ConfigRecord({}))
