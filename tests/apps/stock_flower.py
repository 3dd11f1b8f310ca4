"""A stock Flower Message-API app, written only against ``flwr`` and numpy.

fedge must run it unchanged: nothing here knows about fedge. The "model" is a linear regression
whose clients hold data generated from one true weight vector, so FedAvg provably moves the
global weights towards it and the test can check the result, not just that rounds happened.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

TRUE_W = np.arange(1, 9, dtype=np.float32) / 8.0

client_app = ClientApp()
server_app = ServerApp()


def _local_data(partition_id: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(partition_id)
    x = rng.normal(size=(64, TRUE_W.size)).astype(np.float32)
    return x, x @ TRUE_W


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    w = msg.content["arrays"]["w"].numpy()
    x, y = _local_data(int(context.node_config.get("partition-id", 0)))
    lr = float(msg.content["config"]["lr"])
    for _ in range(20):
        w = w - lr * (2.0 / len(x)) * x.T @ (x @ w - y)
    context.state["calls"] = MetricRecord(
        {"n": int(context.state["calls"]["n"]) + 1 if "calls" in context.state else 1}
    )
    metrics = MetricRecord({"num-examples": len(x), "calls": int(context.state["calls"]["n"])})
    return Message(
        RecordDict({"arrays": ArrayRecord({"w": Array(w.astype(np.float32))}), "metrics": metrics}),
        reply_to=msg,
    )


@client_app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    w = msg.content["arrays"]["w"].numpy()
    x, y = _local_data(int(context.node_config.get("partition-id", 0)))
    mse = float(np.mean((x @ w - y) ** 2))
    return Message(RecordDict({"metrics": MetricRecord({"mse": mse, "num-examples": len(x)})}), reply_to=msg)


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    rounds = int(context.run_config.get("num-server-rounds", 3))
    n = int(context.run_config.get("min-clients", 2))
    strategy = FedAvg(min_train_nodes=n, min_evaluate_nodes=n, min_available_nodes=n)
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord({"w": Array(np.zeros(TRUE_W.size, np.float32))}),
        num_rounds=rounds,
        train_config=ConfigRecord({"lr": 0.05}),
    )
    out = context.run_config.get("result-path")
    if out:
        final = result.arrays["w"].numpy()
        mse = {r: float(m["mse"]) for r, m in result.evaluate_metrics_clientapp.items()}
        calls = {r: int(m["calls"]) for r, m in result.train_metrics_clientapp.items()}
        Path(str(out)).write_text(json.dumps({"w": final.tolist(), "mse": mse, "calls": calls}))
