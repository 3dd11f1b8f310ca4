"""A relay's partial aggregate, and what a relay refuses (docs/relay.md).

The property everything rests on: the weighted mean of the relays' (mean, weight) pairs is the
weighted mean of all the devices' updates, so a two-level federation ends where the flat one does.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedge.codec import as_views
from fedge.relay.app import Sampling, refusal
from fedge.relay.partial import PartialAggregate
from fedge.security.secagg.wire import MESSAGE_TYPE as SECAGG_MESSAGE_TYPE
from fedge.strategies.streaming import WeightedSum

RUN = 7
CONFIG = {"task": "digits", "num-server-rounds": 2, "min-clients": 2}


@pytest.fixture(autouse=True)
def _identity() -> None:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, RUN, 1


def _instruction(kind: str = "train") -> Message:
    msg = Message(RecordDict({"arrays": ArrayRecord({"w": Array(np.zeros(5, np.float32))})}), 3, kind)
    msg.metadata.__dict__["_message_id"] = f"ins-{id(msg)}"
    return msg


def _update(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"w": rng.normal(size=5).astype(np.float32), "n": rng.integers(0, 9, size=2)}


def _reply(update: dict[str, np.ndarray], weight: Any, loss: float) -> Message:
    arrays = ArrayRecord({k: Array(v) for k, v in update.items()})
    metrics = MetricRecord({"num-examples": weight, "train-loss": loss})
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=_instruction())


def test_the_mean_of_partial_aggregates_is_the_flat_mean() -> None:
    rng = np.random.default_rng(0)
    updates, weights = [_update(rng) for _ in range(5)], [3, 1, 7, 2, 5]
    flat = WeightedSum()
    for u, w in zip(updates, weights, strict=True):
        flat.add(u, w)
    expected = as_views(flat.result())
    top = WeightedSum()
    for subtree in ([0, 1], [2], [3, 4]):  # three relays
        partial = PartialAggregate()
        for i in subtree:
            partial.add(_reply(updates[i], weights[i], float(i)))
        reply = partial.reply_to(_instruction())
        metrics = reply.content["metrics"]
        assert metrics["num-examples"] == sum(weights[i] for i in subtree)  # the subtree's weight, an int
        assert metrics["train-loss"] == pytest.approx(
            sum(weights[i] * i for i in subtree) / metrics["num-examples"]
        )
        views = as_views(reply.content["arrays"])
        assert views["n"].dtype == np.int64  # mirrors what the devices sent (the server screens it)
        top.add(views, float(metrics["num-examples"]))
    got = as_views(top.result())
    np.testing.assert_allclose(got["w"], expected["w"], rtol=1e-6)
    np.testing.assert_allclose(got["n"], expected["n"], atol=1.0)  # integers rounded by each relay


@pytest.mark.parametrize("weight", [0, -2, float("nan"), float("inf"), [1, 2]])
def test_a_reply_without_a_positive_weight_is_not_folded(weight: Any) -> None:
    partial = PartialAggregate()
    with pytest.raises(ValueError, match="num-examples"):
        partial.add(_reply(_update(np.random.default_rng(1)), weight, 0.0))
    assert partial.count == 0
    with pytest.raises(ValueError, match="no reply"):
        partial.reply_to(_instruction())


def test_evaluate_replies_fold_their_metrics_only() -> None:
    partial = PartialAggregate()
    for n, acc in ((10, 0.5), (30, 0.9)):
        metrics = MetricRecord({"num-examples": n, "eval-acc": acc})
        partial.add(Message(RecordDict({"metrics": metrics}), reply_to=_instruction("evaluate")))
    content = partial.reply_to(_instruction("evaluate")).content
    assert not content.array_records
    assert content["metrics"]["eval-acc"] == pytest.approx(0.8) and content["metrics"]["num-examples"] == 40


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, None),
        ({"strategy": "fedadam"}, None),  # a function of the weighted mean: sound through relays
        ({"secagg": True, "min-clients": 3}, "secure aggregation cannot pass through relays"),
        ({"strategy": "krum"}, "needs every update"),
        ({"strategy": "fedmedian"}, "needs every update"),
        ({"dp-noise": 1.0, "clip": 1.0}, "central DP"),
    ],
)
def test_what_a_relay_refuses(settings: dict[str, Any], expected: str | None) -> None:
    problem = refusal(_instruction(), {**CONFIG, **settings})
    assert problem is None if expected is None else expected in str(problem)
    if problem is not None:
        assert "not to relays" in problem  # the hint


def test_a_secagg_stage_is_refused_whatever_the_app() -> None:
    stage = Message(RecordDict({"config": ConfigRecord({"stage": 0})}), 3, SECAGG_MESSAGE_TYPE)
    assert "secure aggregation" in str(refusal(stage, {"some-app-key": 1}))
    assert refusal(_instruction(), {"some-app-key": 1}) is None  # another app: its weighted mean


def test_sampling_is_reproducible_and_bounded() -> None:
    nodes = list(range(100, 120))
    sampling = Sampling(fraction=0.25, min_devices=2)
    first = sampling.pick(nodes, (RUN, 1, 9))
    assert first == sampling.pick(nodes, (RUN, 1, 9)) and len(first) == 5 and set(first) <= set(nodes)
    assert first != sampling.pick(nodes, (RUN, 2, 9))  # another round, another sample
    assert len(Sampling(fraction=0.01, min_devices=3).pick(nodes, (RUN, 1, 9))) == 3
    assert Sampling().pick(nodes, (RUN, 1, 9)) == nodes
