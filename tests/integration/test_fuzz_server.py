"""Random and truncated bytes thrown at a live server never crash it; memory stays bounded."""

from __future__ import annotations

from pathlib import Path

import grpc
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedge.config import ServerConfig
from fedge.protos.v1 import control_pb2, control_pb2_grpc, fleet_pb2
from fedge.server.service import FedgeServer

HELLO = fleet_pb2.EdgeFrame(hello=fleet_pb2.Hello(name="fuzz")).SerializeToString()
VALID = fleet_pb2.EdgeFrame(
    reply=fleet_pb2.Chunk(message_id="m", index=0, total=2, data=b"\x01" * 64)
).SerializeToString()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    state = Path(tmp_path_factory.mktemp("fuzz"))
    srv = FedgeServer(ServerConfig(address="127.0.0.1:0", state_dir=str(state), insecure=True))
    srv.start()
    yield srv
    srv.stop(grace=0)


def _send_raw(address: str, frames: list[bytes]) -> None:
    """Raw bytes as Fleet.Connect request messages (no client-side serialization)."""
    with grpc.insecure_channel(address) as channel:
        call = channel.stream_stream(
            "/fedge.v1.Fleet/Connect", request_serializer=None, response_deserializer=None
        )
        try:
            for _ in call(iter(frames), timeout=2):
                pass
        except grpc.RpcError:
            pass


frames = st.lists(
    st.one_of(st.binary(max_size=256), st.integers(0, len(VALID)).map(lambda n: VALID[:n])), max_size=6
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames)
def test_garbage_frames_never_take_the_server_down(server: FedgeServer, junk: list[bytes]) -> None:
    _send_raw(server.address, [HELLO, *junk])
    _send_raw(server.address, junk)


def test_server_is_alive_and_bounded_after_fuzzing(server: FedgeServer) -> None:
    rss_before = psutil.Process().memory_info().rss
    for _ in range(20):
        _send_raw(server.address, [HELLO, VALID[: len(VALID) // 2], b"\xff" * 200])
    with grpc.insecure_channel(server.address) as channel:
        control_pb2_grpc.ControlStub(channel).ListNodes(control_pb2.ListNodesRequest(), timeout=5)
    assert psutil.Process().memory_info().rss - rss_before < 64 * 2**20
