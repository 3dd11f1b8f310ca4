"""A ClientApp whose updates are known exactly, for secure-aggregation tests.

Each client adds a seeded random delta (by ``partition-id`` and round) to the global model and
reports ``num-examples = 100 + 50·partition-id``. It writes its delta to ``probe-dir`` (the test's
window into the device) so a test can compute the plaintext FedAvg of any set of survivors and
compare it with what secure aggregation produced. With ``stall-round`` equal to the current
round it writes a marker and hangs, so a test can kill it in the middle of the masked-input stage.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


def delta_for(partition: int, server_round: int, like: np.ndarray) -> np.ndarray:
    """The update of client ``partition`` in ``server_round`` for an array shaped like ``like``."""
    if not np.issubdtype(like.dtype, np.floating):
        return np.zeros_like(like)
    rng = np.random.default_rng([partition, server_round, like.size])
    return (rng.normal(size=like.shape) * 0.01).astype(like.dtype)


def examples_for(partition: int) -> int:
    return 100 + 50 * partition


@app.train()
def train(msg: Message, context: Context) -> Message:
    partition = int(context.node_config.get("partition-id", 0))
    server_round = int(msg.content["config"]["server-round"])  # type: ignore[arg-type]
    probe = Path(str(context.node_config["probe-dir"]))
    if int(context.node_config.get("stall-round", -1)) == server_round:
        (probe / f"stalled-{partition}").write_text(str(os.getpid()))
        time.sleep(120)
    arrays: dict[str, Array] = {}
    deltas: dict[str, np.ndarray] = {}
    for name, array in msg.content["arrays"].items():  # type: ignore[union-attr]
        value = array.numpy()
        deltas[name] = delta_for(partition, server_round, value)
        arrays[name] = Array(value + deltas[name])
    np.savez(probe / f"delta-r{server_round}-p{partition}.npz", **deltas)
    metrics = MetricRecord({"num-examples": examples_for(partition), "train-loss": float(partition)})
    return Message(RecordDict({"arrays": ArrayRecord(arrays), "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    metrics = MetricRecord({"eval-loss": 0.0, "eval-acc": 0.0, "num-examples": 1})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
