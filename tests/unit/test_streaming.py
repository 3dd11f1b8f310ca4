"""WeightedSum equals Flower's FedAvg.aggregate_train on the same replies, within float rounding."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedge.codec import decode_message, encode_message
from fedge.strategies.streaming import WeightedSum

PROP = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
#: A model's worth of arrays: float32 weights (incl. 0-d and Fortran order), BatchNorm's int64
#: counter, and the other dtypes Flower averages (float16/float64 stay; bool/int become float64).
LAYOUT = {
    "conv.weight": ((4, 3, 3, 3), "<f4"),
    "fc.weight": ((17, 5), "<f4"),
    "fc.bias": ((5,), "<f4"),
    "scale": ((), "<f4"),
    "bn.num_batches_tracked": ((), "<i8"),
    "bn.running_var": ((5,), "<f8"),
    "half": ((9,), "<f2"),
    "mask": ((6,), "?"),
    "counts": ((2, 2), "<u2"),
    "empty": ((0, 3), "<f4"),
}


@pytest.fixture(autouse=True)
def _identity() -> None:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 7, 0


def _update(rng: np.random.Generator, scale: float) -> dict[str, np.ndarray]:
    out = {}
    for name, (shape, dtype) in LAYOUT.items():
        if np.dtype(dtype).kind == "f":
            value = np.asarray(rng.standard_normal(shape) * scale).astype(dtype)
        else:
            value = np.asarray(rng.integers(0, 2 if dtype == "?" else 1000, shape)).astype(dtype)
        out[name] = np.asfortranarray(value) if name == "fc.weight" else value
    return out


def _replies(updates: list[dict[str, np.ndarray]], weights: list[int]) -> list[Message]:
    instruction = Message(RecordDict({"arrays": ArrayRecord()}), dst_node_id=3, message_type="train")
    instruction.metadata.__dict__["_message_id"] = "instruction"
    replies = []
    for update, weight in zip(updates, weights, strict=True):
        content = RecordDict(
            {
                "arrays": ArrayRecord({k: Array(v) for k, v in update.items()}),
                "metrics": MetricRecord({"num-examples": weight}),
            }
        )
        reply = Message(content, reply_to=instruction)
        replies.append(decode_message(encode_message(reply)))  # as they arrive off the wire
    return replies


def _assert_close(
    ours: ArrayRecord, flower: ArrayRecord, updates: list[dict[str, np.ndarray]], weights: list[int]
) -> None:
    """Both are Σ xᵢ·wᵢ/W rounded differently: bound by n+2 roundings of the magnitudes summed."""
    assert list(ours) == list(flower)
    share = np.asarray(weights, np.float64) / sum(weights)
    for name in flower:
        a, b = ours[name].numpy(), flower[name].numpy()
        assert a.dtype == b.dtype and a.shape == b.shape, name
        magnitude = sum(s * np.abs(u[name].astype(np.float64)) for s, u in zip(share, updates, strict=True))
        bound = 2 * (len(updates) + 2) * np.finfo(a.dtype).eps * magnitude + np.finfo(a.dtype).tiny
        assert np.all(np.abs(a.astype(np.float64) - b.astype(np.float64)) <= bound), name


@PROP
@given(st.lists(st.integers(1, 5000), min_size=1, max_size=12), st.integers(0, 2**32 - 1), st.booleans())
def test_equals_flower_fedavg(weights: list[int], seed: int, preallocate: bool) -> None:
    rng = np.random.default_rng(seed)
    updates = [_update(rng, scale=10.0 ** rng.integers(-3, 3)) for _ in weights]
    replies = _replies(updates, weights)
    flower, _ = FedAvg().aggregate_train(1, replies)

    acc = WeightedSum(replies[0].content.array_records["arrays"] if preallocate else None)
    for reply in replies:
        weight = reply.content.metric_records["metrics"]["num-examples"]
        assert isinstance(weight, int)
        acc.add(reply.content.array_records["arrays"], weight)
    assert acc.count == len(weights) and acc.total_weight == sum(weights)
    assert flower is not None
    _assert_close(acc.result(), flower, updates, weights)


def test_plain_arrays_fold_like_records() -> None:
    """Opened sealed replies are name → ndarray: they fold without being re-serialized."""
    rng = np.random.default_rng(3)
    updates, weights = [_update(rng, 1.0) for _ in range(4)], [3, 1, 4, 1]
    records, arrays = WeightedSum(), WeightedSum()
    for update, weight, reply in zip(updates, weights, _replies(updates, weights), strict=True):
        records.add(reply.content.array_records["arrays"], weight)
        arrays.add(update, weight)
    assert records.result() == arrays.result()


def test_torch_state_dict_mean() -> None:
    models = [torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.BatchNorm1d(4)) for _ in range(3)]
    acc = WeightedSum()
    for model, weight in zip(models, [1.0, 2.0, 5.0], strict=True):
        acc.add(ArrayRecord(model.state_dict()), weight)
    mean = acc.result().to_torch_state_dict()
    expected = sum(w * m.state_dict()["0.weight"] for m, w in zip(models, [1.0, 2.0, 5.0], strict=True)) / 8
    torch.testing.assert_close(mean["0.weight"], expected)
    assert mean["1.num_batches_tracked"].dtype == torch.float64  # as Flower's aggregate returns it


def test_mismatched_updates_are_refused_and_not_added() -> None:
    acc = WeightedSum({"w": np.zeros(3, np.float32)})
    for bad in (
        {"w": np.zeros(4, np.float32)},
        {"w": np.zeros(3, np.float64)},
        {"v": np.zeros(3, np.float32)},
    ):
        with pytest.raises(ValueError, match="reference"):
            acc.add(bad, 1.0)
    for weight in (float("nan"), float("inf"), -861.5):
        with pytest.raises(ValueError, match="finite and not negative"):
            acc.add({"w": np.ones(3, np.float32)}, weight)
    assert acc.count == 0
    with pytest.raises(ValueError, match="no update"):
        acc.result()


def test_zero_total_weight_and_reuse_are_errors() -> None:
    acc = WeightedSum()
    acc.add({"w": np.ones(2, np.float32)}, 0.0)
    with pytest.raises(ValueError, match="sum to 0"):
        acc.result()
    acc.add({"w": np.ones(2, np.float32)}, 2.0)
    assert acc.result()["w"].numpy().tolist() == [1.0, 1.0]
    with pytest.raises(RuntimeError):
        acc.add({"w": np.ones(2, np.float32)}, 1.0)


def test_updates_are_not_retained() -> None:
    """What makes server memory O(model): a folded reply can be freed at once."""
    acc = WeightedSum()
    record = ArrayRecord([np.ones(1000, np.float32)])
    ref = weakref.ref(record)
    acc.add(record, 1.0)
    del record
    gc.collect()
    assert ref() is None
