"""configapp: the ClientApp, configured only by its pyproject's run config."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    rng = np.random.default_rng(int(context.node_config["partition-id"]))
    size = int(context.run_config["model.size"])
    x = rng.normal(size=(40, size))
    y = x @ np.arange(1.0, size + 1)
    w = msg.content["arrays"]["w"].numpy()
    for _ in range(int(context.run_config["local-epochs"])):
        w = w - float(context.run_config["lr"]) * 2.0 * x.T @ (x @ w - y) / len(y)
    reply = RecordDict(
        {"arrays": ArrayRecord({"w": Array(w)}), "metrics": MetricRecord({"num-examples": len(y)})}
    )
    return Message(reply, reply_to=msg)
