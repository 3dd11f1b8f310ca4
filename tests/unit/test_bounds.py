"""Bounded weights and the adaptive update-norm bound, decided per reply (issue 14, items 1-2)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedge.server.bounds import WARMUP, BoundedScreen, NormHistory
from fedge.strategies.weights import weight_problem

RUN = 7


@pytest.fixture(autouse=True)
def _identity() -> None:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, RUN, 1


def _instruction(kind: str = "train") -> Message:
    msg = Message(RecordDict({"arrays": ArrayRecord({"w": Array(np.ones(4, np.float32))})}), 3, kind)
    msg.metadata.__dict__["_message_id"] = f"ins-{id(msg)}"
    return msg


def _reply(instruction: Message, delta: float, weight: Any = 10) -> Message:
    arrays = ArrayRecord({"w": Array(np.ones(4, np.float32) + np.float32(delta))})
    content = RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": weight})})
    return Message(content, reply_to=instruction)


@pytest.mark.parametrize("weight", [1e9, -861.5, 0, float("nan"), float("inf")])
def test_weights_outside_zero_to_max_are_refused(weight: float) -> None:
    ins = _instruction()
    assert weight_problem(_reply(ins, 0.1, weight), 100_000) is not None
    assert weight_problem(_reply(ins, 0.1, 100_000), 100_000) is None


def test_the_screen_rejects_and_audits_a_bad_weight() -> None:
    lines: list[tuple[str, dict[str, Any]]] = []
    screen = BoundedScreen(RUN, lambda event, **f: lines.append((event, f)), max_examples=1000)
    ins = _instruction()
    out = screen.check(_reply(ins, 0.1, 5000), ins, ins.content.array_records["arrays"])
    assert out.has_error() and "max-examples" in out.error.reason
    assert lines[0][0] == "update-rejected" and lines[0][1]["reason"] == "weight"


def test_the_adaptive_bound_follows_the_median_of_accepted_norms() -> None:
    history = NormHistory(10.0)
    reference = ArrayRecord({"w": Array(np.full(4, 0.5, np.float32))})  # norm 1.0
    assert history.bound(reference) == pytest.approx(10.0)  # no history yet: the model's scale
    for norm in [0.2, 0.4, 100.0][:WARMUP]:
        history.accept(norm)
    assert history.bound(reference) == pytest.approx(4.0)  # 10 × median: the outlier does not count
    assert NormHistory(10.0).bound(ArrayRecord({"w": Array(np.zeros(4, np.float32))})) is None


def test_a_scaled_update_is_rejected_and_does_not_move_the_bound() -> None:
    lines: list[str] = []
    screen = BoundedScreen(RUN, lambda event, **f: lines.append(f["reason"]), norm_bound_factor=10.0)
    for delta in (0.1, 0.12, 0.09, 0.1 * 1e6, 0.11):
        ins = _instruction()
        screen.check(_reply(ins, delta), ins, ins.content.array_records["arrays"])
    assert lines == ["norm"]
    ins = _instruction("evaluate")  # only train replies are updates
    assert not screen.check(_reply(ins, 1e6), ins, ins.content.array_records["arrays"]).has_error()


def test_a_fixed_bound_replaces_the_adaptive_one() -> None:
    screen = BoundedScreen(RUN, lambda *a, **k: None, 1e9, norm_bound_factor=10.0)
    ins = _instruction()
    assert not screen.check(_reply(ins, 1e6), ins, ins.content.array_records["arrays"]).has_error()


class _Grid:
    """Answers the train messages with prepared replies (Flower's non-streaming grid shape)."""

    def __init__(self, weights: list[Any]) -> None:
        self.weights = weights

    def send_and_receive(self, messages: list[Message], timeout: float | None = None) -> list[Message]:
        return [_reply(m, 1.0, w) for m, w in zip(messages, self.weights, strict=True)]


@pytest.mark.parametrize("weight", [1e9, -861.5, float("nan")])
def test_the_streaming_exchange_never_folds_a_bad_weight(weight: float) -> None:
    from flwr.serverapp.strategy import FedAvg

    from fedge.strategies import StreamingExchange

    messages = [_instruction() for _ in range(3)]
    replies = StreamingExchange(FedAvg(), max_examples=1000).train(_Grid([10, 30, weight]), messages, 1, None)
    mean, failed = replies
    assert failed.has_error() and "weight" in failed.error.reason
    assert mean.content["metrics"]["num-examples"] == 40
    np.testing.assert_allclose(mean.content["arrays"]["w"].numpy(), 2.0)
