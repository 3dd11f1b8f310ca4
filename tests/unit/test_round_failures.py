"""A round without enough updates fails with every client's whole reason and the fix it names."""

from __future__ import annotations

import pytest
from flwr.app import Error, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.supercore.task_identity import TaskIdentity

from fedge.server.recorder import MAX_REASON, _hint, _reasons

DEVICE_REASON = (
    "<class 'fedge.errors.FedgeError'>:<'this device cannot load task 'mytask:TASK': cannot import module "
    "'mytask' for task 'mytask:TASK': No module named 'mytask' (hint: a task's or app's code must be on "
    "every device: install its package there (pip install), or copy it and start the daemon with "
    "`fedge client start --app-dir DIR`)'>"
)


@pytest.fixture(autouse=True)
def _task_identity() -> None:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 7, 0


def _failed(node: int, reason: str) -> Message:
    reply = Message(RecordDict(), node, "train")
    failed = Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason), reply_to=reply)
    failed.metadata.__dict__["_src_node_id"] = node
    return failed


def test_same_failure_on_every_node_is_quoted_once_whole_with_its_own_hint() -> None:
    replies = [_failed(3, DEVICE_REASON), _failed(9, DEVICE_REASON)]
    text = _reasons(replies)
    assert text.count("No module named 'mytask'") == 1 and "node 3, node 9: " in text
    assert "fedge client start --app-dir DIR" in text  # not cut at 200 characters
    hint = _hint(replies)
    assert hint.startswith("a task's or app's code must be on every device") and hint.endswith(
        "--app-dir DIR`"
    )
    assert "min-clients" not in hint


def test_different_failures_and_lost_nodes_get_fitting_hints() -> None:
    mixed = [_failed(3, DEVICE_REASON), _failed(4, "<class 'OSError'>:<'disk full'>")]
    assert "node 4: <class 'OSError'>:<'disk full'>" in _reasons(mixed)
    assert _hint(mixed) == "fix what the clients reported above, or lower --min-clients to go on without them"
    assert _hint([]) == "lower --min-clients or check the disconnected nodes"


def test_a_huge_reason_is_bounded_at_a_word() -> None:
    text = _reasons([_failed(5, "word " * 2000)])
    assert len(text) < MAX_REASON + 40 and text.endswith("word …)")
