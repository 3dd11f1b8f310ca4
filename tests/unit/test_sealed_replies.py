"""Sealed replies through the server path: opened when genuine; rejected, audited, never aggregated
when tampered, signed by another device, replayed from an earlier round, or not sealed at all."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from flwr.app import Array, ArrayRecord, Message, RecordDict
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from fedge.codec import decode_message, encode_message
from fedge.protos.v1 import envelope_pb2
from fedge.security import init_pki
from fedge.security.seal import SEALED_KEY, seal_record
from fedge.server.audit import AuditLog
from fedge.server.grid import FedgeGrid
from fedge.server.router import Router, Session
from fedge.server.screening import REJECTED, ReplyScreen
from fedge.server.sealing import ReplyOpener
from tests.unit.test_router_grid import RouterLink, instruction_chunks

DEVICE = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()
UPDATE = np.arange(8, dtype=np.float32)


@pytest.fixture(autouse=True)
def _identity() -> None:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 7, 1


def _flip(record: object) -> None:
    sealed = bytearray(record[SEALED_KEY])  # type: ignore[index]
    sealed[-64 - 16 - 8] ^= 1  # inside the ciphertext: before the GCM tag and the Ed25519 signature
    record[SEALED_KEY] = bytes(sealed)  # type: ignore[index]


CASES: dict[str, tuple[Ed25519PrivateKey, int, Callable[[object], None] | None, str | None]] = {
    "genuine": (DEVICE, 0, None, None),
    "tampered": (DEVICE, 0, _flip, "tampered"),
    "another-device": (OTHER, 0, None, "bad-signature"),
    "replay": (DEVICE, -1, None, "replay"),
}


def _device(router: Router, session: Session, case: str) -> None:
    (frame,) = instruction_chunks(session)
    msg = decode_message(frame.data)
    record = ArrayRecord({"w": Array(UPDATE)})
    if case == "unsealed":
        content = RecordDict({"arrays": record})
    else:
        key, round_shift, mutate, _ = CASES[case]
        ann = envelope_pb2.AggregatorAnnouncement.FromString(frame.run.announcement)
        sealed = seal_record(
            record,
            announcement=ann,
            run_id=7,
            round=frame.run.round + round_shift,
            node_id=2,
            stage="train",
            device_key=key,
        )
        if mutate:
            mutate(sealed)
        content = RecordDict({"arrays": sealed})
    reply = Message(content, reply_to=msg)
    router.deliver(session.node_id, frame.message_id, encode_message(reply))


@pytest.mark.parametrize("case", [*CASES, "unsealed"])
def test_sealed_replies_are_opened_or_rejected(tmp_path: Path, case: str) -> None:
    init_pki(tmp_path / "pki")
    router = Router()
    pub = DEVICE.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    node = Session(2, "edge", "peer", signing_pub=pub)
    router.open(node)
    audit = tmp_path / "audit.jsonl"
    grid = FedgeGrid(
        RouterLink(router),
        Run.create_empty(7),
        screen=ReplyScreen(7, AuditLog(audit).write),
        opener=ReplyOpener(7, tmp_path / "pki"),
    )
    threading.Thread(target=_device, args=(router, node, case), daemon=True).start()
    instruction = Message(
        RecordDict({"arrays": ArrayRecord({"w": Array(np.zeros(8, np.float32))})}), 2, "train"
    )
    (reply,) = grid.send_and_receive([instruction], timeout=10)
    expected = CASES[case][3] if case in CASES else "unsealed"
    if expected is None:
        assert np.array_equal(reply.content["arrays"]["w"].numpy(), UPDATE) and not audit.exists()
        return
    assert reply.has_error() and reply.error.code == REJECTED and expected in reply.error.reason
    (line,) = audit.read_text().splitlines()
    assert {"event": "update-rejected", "reason": expected}.items() <= json.loads(line).items()
