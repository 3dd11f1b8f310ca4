"""The round loop keeps the global model's dtypes through Flower's aggregation."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity

from fedge.strategies.loop import keep_dtypes


def _state(mean: float, counter: int) -> ArrayRecord:
    return ArrayRecord(
        {
            "bn.running_mean": Array(np.full(3, mean, np.float32)),
            "bn.num_batches_tracked": Array(np.array(counter)),
        }
    )


def test_integer_arrays_come_back_as_integers_after_fedavg(monkeypatch: pytest.MonkeyPatch) -> None:
    for attr, value in (("_task_id", 1), ("_run_id", 7), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, attr, value)
    sent = _state(0.0, 0)
    instruction = Message(RecordDict({"arrays": sent}), dst_node_id=3, message_type="train")
    instruction.metadata.__dict__["_message_id"] = "instruction"
    replies = [
        Message(
            RecordDict({"arrays": _state(mean, n), "metrics": MetricRecord({"num-examples": w})}),
            reply_to=instruction,
        )
        for mean, n, w in ((1.0, 10, 1), (3.0, 13, 2))
    ]
    aggregated, _ = FedAvg().aggregate_train(1, replies)
    assert aggregated is not None and aggregated["bn.num_batches_tracked"].dtype == "float64"  # Flower's
    mean = aggregated["bn.running_mean"]
    kept = keep_dtypes(aggregated, sent)
    assert (
        kept["bn.num_batches_tracked"].dtype == "int64" and int(kept["bn.num_batches_tracked"].numpy()) == 12
    )
    assert kept["bn.running_mean"] is mean  # already in its dtype: untouched
    assert np.allclose(mean.numpy(), 7 / 3)
