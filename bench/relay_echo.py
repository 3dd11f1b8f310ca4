"""A torch-free ClientApp for the relay benchmark: answers like a device, without training.

Train replies carry the received arrays nudged by a small seeded step (so the aggregate moves and
every screen passes: same names, shapes and dtypes, a small update norm) and ``num-examples``;
evaluate replies carry a metric. What a round then costs is the federation's transport and
aggregation, which is what ``bench/relay_scale.py`` compares, not the devices' training.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedge.codec import array_view

app = ClientApp()
EXAMPLES = 100


@app.train()
def train(message: Message, context: Context) -> Message:
    """The received arrays plus a step of 1e-3 in a node- and round-seeded direction."""
    rng = np.random.default_rng([context.node_id % 2**32, len(context.state.config_records)])
    out = ArrayRecord()
    for name, array in message.content["arrays"].items():
        x = array_view(array)
        step = rng.standard_normal(x.shape).astype(x.dtype) * 1e-3 if x.dtype.kind == "f" else 0
        out[name] = Array(np.array(x + step))  # (ascontiguousarray would make a 0-d array 1-d)
    metrics = MetricRecord({"num-examples": EXAMPLES, "train-loss": 1.0})
    return Message(RecordDict({"arrays": out, "metrics": metrics}), reply_to=message)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    """A constant metric: evaluation's cost is its round trip."""
    metrics = MetricRecord({"num-examples": EXAMPLES, "eval-loss": 1.0, "eval-acc": 0.1})
    return Message(RecordDict({"metrics": metrics}), reply_to=message)
