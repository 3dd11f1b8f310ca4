"""A client answering with other dtypes than it received (Message API, FedAvg).

The model is float32 weights and an int64 step counter; the client computes in float64 and sends
float64 back, as a NumPy-based client naturally does. FedAvg averages whatever comes back.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from zoo_data import mse, partition, save_result, sgd

client_app = ClientApp()
server_app = ServerApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    x, y = partition(int(context.node_config["partition-id"]))
    arrays = msg.content["arrays"]
    w = sgd(arrays["w"].numpy(), x, y)  # float64
    steps = arrays["steps"].numpy().astype(np.float64) + 5
    content = RecordDict(
        {
            "arrays": ArrayRecord({"w": Array(w), "steps": Array(steps)}),
            "metrics": MetricRecord({"num-examples": len(y), "train-mse": mse(w, x, y)}),
        }
    )
    return Message(content, reply_to=msg)


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    initial = ArrayRecord({"w": Array(np.zeros(4, np.float32)), "steps": Array(np.zeros(1, np.int64))})
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=3, min_available_nodes=3)
    result = strategy.start(grid, initial, num_rounds=int(context.run_config["num-server-rounds"]))
    final = result.arrays
    save_result(
        context.run_config,
        {
            "w": final["w"].numpy().tolist(),
            "steps": final["steps"].numpy().tolist(),
            "dtypes": [final["w"].dtype, final["steps"].dtype],
            "train-mse": {str(k): dict(v) for k, v in result.train_metrics_clientapp.items()},
        },
    )
