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


def _screened(
    screen: ReplyScreen, reply_arrays: dict[str, Array], instruction_arrays: ArrayRecord
) -> Message:
    """One reply through ``screen`` against an instruction carrying ``instruction_arrays``."""
    router = Router()
    node = Session(2, "edge", "peer")
    router.open(node)
    grid = FedgeGrid(RouterLink(router), Run.create_empty(7), screen=screen)

    def device() -> None:
        (frame,) = instruction_chunks(node)
        msg = decode_message(frame.data)
        reply = Message(RecordDict({"arrays": ArrayRecord(reply_arrays)}), reply_to=msg)  # type: ignore[arg-type]
        router.deliver(node.node_id, frame.message_id, encode_message(reply))

    threading.Thread(target=device, daemon=True).start()
    (reply,) = grid.send_and_receive(
        [Message(RecordDict({"arrays": instruction_arrays}), 2, "train")], timeout=10
    )
    return reply


MODEL = ArrayRecord({"w": Array(np.zeros(4, np.int64))})


@pytest.mark.parametrize(
    "arrays",
    [
        {"w": Array(np.zeros(4, np.float64))},  # a NumPyClient answering an int64 model in float64
        {"hist": Array(np.arange(10.0))},  # a query app: other arrays than the instruction's
        {},  # secaggplus_mod: an emptied record, the masked vector in a ConfigRecord
    ],
)
def test_replies_of_apps_that_declare_no_mirroring_may_differ_from_the_instruction(
    arrays: dict[str, Array],
) -> None:
    reply = _screened(ReplyScreen(7, lambda *a, **k: None, mirror=False), arrays, MODEL)
    assert not reply.has_error(), reply.error.reason
    assert sorted(reply.content["arrays"]) == sorted(arrays)
    # The same reply breaks the promise of an app that declared mirroring.
    if arrays:
        declared = _screened(ReplyScreen(7, lambda *a, **k: None, mirror=True), arrays, MODEL)
        assert declared.has_error() and declared.error.code == REJECTED


def test_without_mirroring_values_and_the_norm_bound_are_still_screened() -> None:
    screen = ReplyScreen(7, lambda *a, **k: None, mirror=False)
    nan = _screened(screen, {"hist": Array(np.array([1.0, np.nan]))}, MODEL)
    assert nan.has_error() and "non-finite" in nan.error.reason
    bounded = ReplyScreen(7, lambda *a, **k: None, 1.0, mirror=False)
    far = _screened(bounded, {"w": Array(np.full(4, 3.0))}, MODEL)
    assert far.has_error() and "norm" in far.error.reason
    renamed = _screened(bounded, {"v": Array(np.zeros(4))}, MODEL)  # a bound needs the model's layout
    assert renamed.has_error() and "names" in renamed.error.reason
    near = _screened(bounded, {"w": Array(np.full(4, 0.25))}, MODEL)
    assert not near.has_error()


def test_an_instruction_screening_cannot_read_rejects_the_reply_instead_of_failing_the_run() -> None:
    # Flower's compat layer sends a placeholder array (stype '') when a run has no initial model.
    placeholder = ArrayRecord({"0": Array(dtype="", shape=(), stype="", data=b"")})
    reply = _screened(ReplyScreen(7, lambda *a, **k: None), {"0": Array(np.ones(3))}, placeholder)
    assert reply.has_error() and reply.error.code == REJECTED and "reference" in reply.error.reason
    lenient = _screened(
        ReplyScreen(7, lambda *a, **k: None, mirror=False), {"0": Array(np.ones(3))}, placeholder
    )
    assert not lenient.has_error()
