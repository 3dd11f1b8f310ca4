"""A peer that breaks the chunking rules loses its stream, is audited, and the server lives on."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from fedge.config import ServerConfig
from fedge.protos.v1 import control_pb2, control_pb2_grpc, fleet_pb2, fleet_pb2_grpc
from fedge.server.service import FedgeServer


@pytest.fixture
def server(tmp_path: Path):  # type: ignore[no-untyped-def]
    cfg = ServerConfig(address="127.0.0.1:0", state_dir=str(tmp_path), insecure=True, max_message_bytes=1024)
    srv = FedgeServer(cfg)
    srv.start()
    yield srv
    srv.stop(grace=0)


def _connect(address: str, frames: list[fleet_pb2.EdgeFrame]) -> grpc.RpcError | None:
    channel = grpc.insecure_channel(address)
    try:
        for _ in fleet_pb2_grpc.FleetStub(channel).Connect(iter(frames), timeout=10):
            pass
    except grpc.RpcError as exc:
        return exc
    finally:
        channel.close()
    return None


@pytest.mark.parametrize(
    ("chunk", "reason"),
    [
        (fleet_pb2.Chunk(message_id="m", index=0, total=10**6, data=b""), "chunk-count"),
        (fleet_pb2.Chunk(message_id="m", index=3, total=4, data=b"x"), "out-of-order"),
        (fleet_pb2.Chunk(message_id="m", index=0, total=1, data=b"x" * 2048), "message-size"),
    ],
)
def test_violation_closes_only_that_stream(server: FedgeServer, chunk: fleet_pb2.Chunk, reason: str) -> None:
    hello = fleet_pb2.EdgeFrame(hello=fleet_pb2.Hello(name="bad-peer"))
    error = _connect(server.address, [hello, fleet_pb2.EdgeFrame(reply=chunk)])
    assert error is not None and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason in (error.details() or "")
    events = [json.loads(line) for line in (server.state_dir / "audit.jsonl").read_text().splitlines()]
    assert {"event": "violation", "node": "bad-peer", "reason": reason}.items() <= events[-2].items()
    # the server is alive and serving
    with grpc.insecure_channel(server.address) as channel:
        nodes = control_pb2_grpc.ControlStub(channel).ListNodes(control_pb2.ListNodesRequest(), timeout=5)
    assert [n.name for n in nodes.nodes] == ["bad-peer"] and not nodes.nodes[0].online


def test_first_frame_must_be_hello(server: FedgeServer) -> None:
    error = _connect(server.address, [fleet_pb2.EdgeFrame(heartbeat=fleet_pb2.Heartbeat())])
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
