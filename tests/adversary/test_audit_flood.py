"""Issue 14, item 6: one device or one stranger cannot flood the audit log, and what matters is in it.

A real server process; the attacker is an enrolled device speaking raw Fleet frames through
fedge's own channel and stubs (:mod:`tests.adversary.fleet`), or anyone reaching the enrollment
listener.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from fedge.client.wire import make_channel
from fedge.config import EdgeConfig
from fedge.protos.v1 import (
    control_pb2,
    control_pb2_grpc,
    enroll_pb2,
    enroll_pb2_grpc,
    fleet_pb2,
    fleet_pb2_grpc,
)
from fedge.server.audit import BURST
from fedge.server.control_client import _secure_channel
from fedge.sim.local import LocalFederation
from tests.adversary.fleet import exchange, hello

pytestmark = pytest.mark.e2e

#: Ceiling on audit growth per flood: the budget's lines plus the suppression notice, 512 B each.
BOUND = (BURST + 2) * 512


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    federation = LocalFederation(Path(tmp_path_factory.mktemp("audit")))
    try:
        federation.start_server()
        federation.enroll("edge-flood")
        yield federation
    finally:
        federation.close()


def _audit(fed: LocalFederation) -> Path:
    return fed.workdir / "server" / "audit.jsonl"


def _events(fed: LocalFederation, since: int) -> list[dict[str, object]]:
    with _audit(fed).open("rb") as fh:
        fh.seek(since)
        return [json.loads(line) for line in fh.read().splitlines()]


def test_a_3_mb_device_name_adds_a_bounded_line(fed: LocalFederation) -> None:
    before = _audit(fed).stat().st_size
    creds = grpc.ssl_channel_credentials(root_certificates=(fed.pki_dir / "ca.pem").read_bytes())
    with grpc.secure_channel(fed.enroll_address, creds) as channel:
        request = enroll_pb2.EnrollRequest(name="x" * 3_000_000, token="t", csr_pem=b"")
        with pytest.raises(grpc.RpcError) as refused:
            enroll_pb2_grpc.EnrollmentStub(channel).Enroll(request, timeout=10)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert len(refused.value.details() or "") < 1024
    assert 0 < _audit(fed).stat().st_size - before < 2048


def test_2000_model_status_frames_write_a_bounded_number_of_lines(fed: LocalFederation) -> None:
    before = _audit(fed).stat().st_size
    status = fleet_pb2.EdgeFrame(model_status=fleet_pb2.ModelStatus(version="v" * 80, error="e" * 300))
    _, error = exchange(fed.address, fed.workdir / "edge-flood", [hello(), *[status] * 2000], timeout=30)
    assert error is None
    events = _events(fed, before)
    assert sum(e["event"] == "model-refused" for e in events) == BURST
    assert [e["of"] for e in events if e["event"] == "audit-suppressed"] == ["model-refused"]
    assert _audit(fed).stat().st_size - before < BOUND + 1024  # plus connect/disconnect


def test_unsolicited_replies_are_audited_and_bounded(fed: LocalFederation) -> None:
    before = _audit(fed).stat().st_size
    replies = [
        fleet_pb2.EdgeFrame(reply=fleet_pb2.Chunk(message_id=f"forged-{i}", index=0, total=1, data=b"x"))
        for i in range(500)
    ]
    exchange(fed.address, fed.workdir / "edge-flood", [hello(), *replies], timeout=30)
    dropped = [e for e in _events(fed, before) if e["event"] == "reply-dropped"]
    assert len(dropped) == BURST and dropped[0]["node"] == "edge-flood"
    assert _audit(fed).stat().st_size - before < BOUND + 1024


def test_an_admin_certificate_as_device_and_a_device_on_control_are_audited(fed: LocalFederation) -> None:
    before = _audit(fed).stat().st_size
    with _secure_channel(fed.address, fed.pki_dir) as admin:  # admin credentials on the Fleet API
        call = fleet_pb2_grpc.FleetStub(admin).Connect(iter([hello()]), timeout=10)
        with pytest.raises(grpc.RpcError) as refused:
            list(call)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    device = EdgeConfig(server=fed.address, state_dir=str(fed.workdir / "edge-flood"))
    with make_channel(device) as channel:  # a device certificate on the Control API
        with pytest.raises(grpc.RpcError) as denied:
            control_pb2_grpc.ControlStub(channel).ListNodes(control_pb2.ListNodesRequest(), timeout=10)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    events = _events(fed, before)
    assert any(e["event"] == "refused" and e["reason"] == "not a device certificate" for e in events)
    assert any(e["event"] == "control-denied" and e["node"] == "edge-flood" for e in events)
