"""Replies are screened before the ServerApp sees them: rejected ones become audited failures."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, RecordDict
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from fedge.codec import decode_message, encode_message
from fedge.server.audit import AuditLog
from fedge.server.grid import FedgeGrid
from fedge.server.router import Router, Session
from fedge.server.screening import REJECTED, ReplyScreen
from tests.unit.test_router_grid import RouterLink, instruction_chunks


@pytest.fixture(autouse=True)
def _identity() -> None:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 7, 1


def _device(router: Router, session: Session, make: object) -> None:
    (frame,) = instruction_chunks(session)
    msg = decode_message(frame.data)
    arrays = make(msg.content["arrays"]["w"].numpy())  # type: ignore[operator]
    reply = Message(RecordDict({"arrays": ArrayRecord({"w": Array(arrays)})}), reply_to=msg)
    router.deliver(session.node_id, frame.message_id, encode_message(reply))


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda w: w + 1.0, None),
        (lambda w: np.full_like(w, np.nan), "non-finite"),
        (lambda w: np.append(w, 1.0).astype(np.float32), "shape"),
        (lambda w: w.astype(np.float64), "dtype"),
        (lambda w: w + 100.0, "norm"),
    ],
)
def test_bad_updates_are_rejected_and_audited(tmp_path: Path, make: object, reason: str | None) -> None:
    router = Router()
    node = Session(2, "edge", "peer")
    router.open(node)
    audit = tmp_path / "audit.jsonl"
    grid = FedgeGrid(
        RouterLink(router), Run.create_empty(7), screen=ReplyScreen(7, AuditLog(audit).write, 10.0)
    )
    threading.Thread(target=_device, args=(router, node, make), daemon=True).start()
    instruction = Message(
        RecordDict({"arrays": ArrayRecord({"w": Array(np.zeros(4, np.float32))})}), 2, "train"
    )
    (reply,) = grid.send_and_receive([instruction], timeout=10)
    if reason is None:
        assert reply.has_content() and not audit.exists()
        return
    assert reply.has_error() and reply.error.code == REJECTED and reason in reply.error.reason
    (line,) = audit.read_text().splitlines()
    assert {"event": "update-rejected", "node_id": 2, "reason": reason}.items() <= json.loads(line).items()
