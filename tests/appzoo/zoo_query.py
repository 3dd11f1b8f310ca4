"""A query-style Message-API app: ``grid.send_and_receive`` with replies that are not models.

The server asks every node for a histogram of one feature and its sample statistics; replies
carry an ArrayRecord of counts and a MetricRecord — nothing like the (empty) query they answer.
"""

from __future__ import annotations

import time

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from zoo_data import partition, save_result

BINS = np.linspace(-4, 4, 9)
client_app = ClientApp()
server_app = ServerApp()


@client_app.query()
def describe(msg: Message, context: Context) -> Message:
    x, y = partition(int(context.node_config["partition-id"]))
    column = int(msg.content["config"]["column"])  # type: ignore[arg-type]
    hist, _ = np.histogram(x[:, column], bins=BINS)
    content = RecordDict(
        {
            "hist": ArrayRecord({"counts": Array(hist.astype(np.int64))}),
            "stats": MetricRecord({"num-examples": len(y), "mean-y": float(np.mean(y))}),
        }
    )
    return Message(content, reply_to=msg)


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    nodes = list(grid.get_node_ids())
    while len(nodes) < 3:
        time.sleep(0.1)
        nodes = list(grid.get_node_ids())
    result: dict[str, object] = {}
    for column in range(int(context.run_config["num-server-rounds"])):
        queries = [
            Message(RecordDict({"config": ConfigRecord({"column": column})}), node, "query")
            for node in sorted(nodes)
        ]
        replies = [r for r in grid.send_and_receive(queries) if not r.has_error()]
        counts = sum(r.content["hist"]["counts"].numpy() for r in replies)
        n = sum(int(r.content["stats"]["num-examples"]) for r in replies)  # type: ignore[arg-type]
        mean = (
            sum(
                float(r.content["stats"]["mean-y"]) * int(r.content["stats"]["num-examples"]) for r in replies
            )
            / n
        )  # type: ignore[arg-type]
        result[str(column)] = {
            "counts": np.asarray(counts).tolist(),
            "n": n,
            "mean-y": mean,
            "replies": len(replies),
        }
    save_result(context.run_config, result)
