"""Per-round progress of any ServerApp from what crosses the grid."""

from __future__ import annotations

from uuid import uuid4

import pytest
from flwr.app import ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedge.server.progress import Progress
from fedge.server.screening import REJECTED


@pytest.fixture(autouse=True)
def _identity() -> None:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 7, 1


def _sent(progress: Progress, kind: str, group: str, n: int) -> list[Message]:
    batch = [Message(RecordDict(), node, kind, group_id=group) for node in range(1, n + 1)]
    for msg in batch:
        msg.metadata.__dict__["_message_id"] = str(uuid4())
    progress.sent(batch)
    return batch


def _reply(to: Message, **metrics: float) -> Message:
    return Message(RecordDict({"m": MetricRecord(metrics)}), reply_to=to)  # type: ignore[arg-type]


def test_rounds_by_group_id_with_example_weighted_metrics_and_every_outcome() -> None:
    rows: list[dict[str, object]] = []
    progress = Progress(rows.append)
    a, b, c = _sent(progress, "train", "1", 3)
    progress.received(a, _reply(a, **{"num-examples": 30, "loss": 1.0}))
    progress.received(b, _reply(b, **{"num-examples": 10, "loss": 3.0}))
    progress.received(c, Message(Error(REJECTED, "update rejected (dtype): x"), reply_to=c))
    (e,) = _sent(progress, "evaluate", "1", 1)  # the same round: still open
    legacy = RecordDict(
        {
            "evaluateres.num_examples": MetricRecord({"num_examples": 5}),
            "evaluateres.loss": MetricRecord({"loss": 0.5}),
            "evaluateres.metrics": ConfigRecord({"accuracy": 0.75}),
        }
    )
    progress.received(e, Message(legacy, reply_to=e))
    assert rows == []
    (t,) = _sent(progress, "train", "2", 1)  # round 2 starts: round 1 is complete
    progress.received(t, Message(Error(0, "node 1 is not connected"), reply_to=t))
    assert rows == [
        {
            "round": 1,
            "group": "1",
            "train-replies": 2,
            "train-failures": 0,
            "train-rejected": 1,
            "train-loss": 1.5,
            "evaluate-replies": 1,
            "evaluate-failures": 0,
            "evaluate-rejected": 0,
            "evaluate-loss": 0.5,
            "evaluate-accuracy": 0.75,
        }
    ]
    progress.close()
    assert rows[1] == {"round": 2, "group": "2", "train-replies": 0, "train-failures": 1, "train-rejected": 0}
    assert progress.verdict() == ""


def test_apps_without_group_ids_get_a_row_per_exchange() -> None:
    rows: list[dict[str, object]] = []
    progress = Progress(rows.append)
    for _ in range(3):
        (q,) = _sent(progress, "query", "", 1)
        progress.received(q, _reply(q, count=4))
    progress.close()
    assert [(r["round"], r["group"], r["query-count"]) for r in rows] == [
        (1, "exchange", 4.0),
        (2, "exchange", 4.0),
        (3, "exchange", 4.0),
    ]


def test_a_run_whose_every_reply_was_unusable_gets_a_verdict_with_the_reasons() -> None:
    progress = Progress()
    batch = _sent(progress, "train", "1", 3)
    for msg in batch[:2]:
        progress.received(msg, Message(Error(REJECTED, "update rejected (dtype): array 'w'"), reply_to=msg))
    progress.received(batch[2], Message(Error(0, "node 3 is not connected"), reply_to=batch[2]))
    assert progress.verdict() == (
        "none of the run's 3 replies was usable: 2× update rejected (dtype): array 'w'; "
        "1× node 3 is not connected"
    )
    assert Progress().verdict() == ""  # nothing sent back at all is no verdict
