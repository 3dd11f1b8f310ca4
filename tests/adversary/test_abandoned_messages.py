"""Issue 14, item 4: partial messages of a device that disconnects are freed with its stream.

Against a real server process, an enrolled device (fedge's own channel and stubs) sends most of
three large replies, each time disconnecting before the last chunk. The server's RSS must come
back to within 64 MB of what it was before (it used to keep every abandoned byte for good).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psutil
import pytest

from fedge.chunks import CHUNK_BYTES
from fedge.client.wire import make_channel
from fedge.config import EdgeConfig
from fedge.protos.v1 import fleet_pb2, fleet_pb2_grpc
from fedge.sim.local import LocalFederation
from tests.adversary.fleet import hello

pytestmark = pytest.mark.e2e

MESSAGE_MB = 160
ROUNDS = 3


def _abandon(fed: LocalFederation, state: str, message_id: str) -> None:
    """Send all but the last chunk of a MESSAGE_MB reply, then drop the connection."""
    chunks = MESSAGE_MB * 2**20 // CHUNK_BYTES
    sent = threading.Event()
    hold = threading.Event()

    def frames() -> Iterator[fleet_pb2.EdgeFrame]:
        yield hello()
        for index in range(chunks):
            piece = bytes([index % 251]) * CHUNK_BYTES
            yield fleet_pb2.EdgeFrame(
                reply=fleet_pb2.Chunk(message_id=message_id, index=index, total=chunks + 1, data=piece)
            )
        sent.set()
        hold.wait()

    with make_channel(EdgeConfig(server=fed.address, state_dir=state)) as channel:
        call = fleet_pb2_grpc.FleetStub(channel).Connect(frames(), timeout=120)
        assert next(call).WhichOneof("kind") == "welcome"
        assert sent.wait(120)
        time.sleep(1.0)  # let the server read what is in flight
        call.cancel()
        hold.set()


def test_abandoned_partial_messages_are_freed(federation: LocalFederation) -> None:
    federation.start_server()
    state = str(federation.enroll("hoarder"))
    server = psutil.Process(federation.server.pid)  # type: ignore[union-attr]
    _abandon(federation, state, "warm-up")  # the first stream pays for imports and TLS setup
    time.sleep(1.0)
    baseline = server.memory_info().rss
    for i in range(ROUNDS):
        _abandon(federation, state, f"abandoned-{i}")
    deadline = time.monotonic() + 10
    while server.memory_info().rss - baseline > 64 * 2**20 and time.monotonic() < deadline:
        time.sleep(0.5)
    grown = (server.memory_info().rss - baseline) / 2**20
    assert grown <= 64, f"server RSS {grown:.0f} MB above its baseline after {ROUNDS} abandoned messages"
