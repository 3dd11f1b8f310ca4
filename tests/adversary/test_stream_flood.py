"""Issue 14, item 3: one enrolled device opening 600 streams that never say Hello.

Against a real server process: the admin's ``ListNodes`` and an honest device's Welcome must not
be slowed by more than a second compared with the same calls before the flood, each new stream
replaces the device's older one, and a Hello-less stream is cancelled after the Hello deadline.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from fedge.client.wire import make_channel
from fedge.config import EdgeConfig
from fedge.protos.v1 import fleet_pb2, fleet_pb2_grpc
from fedge.sim.local import LocalFederation
from tests.adversary.fleet import exchange, hello

pytestmark = pytest.mark.e2e

STREAMS = 600
HELLO_TIMEOUT = 3.0


@pytest.fixture
def fed(tmp_path: Path) -> Iterator[LocalFederation]:
    federation = LocalFederation(tmp_path)
    config = tmp_path / "server.toml"
    config.write_text(f"[server]\nhello-timeout = {HELLO_TIMEOUT}\n")
    try:
        federation.start_server(["--config", str(config)])
        yield federation
    finally:
        federation.close()


def _latencies(fed: LocalFederation, honest: Path) -> tuple[float, float]:
    """Seconds for the admin's ListNodes and for an honest device's Welcome."""
    admin = fed.control()
    started = time.monotonic()
    try:
        admin.list_nodes()
    finally:
        admin.close()
    listed = time.monotonic() - started
    started = time.monotonic()
    frames, error = exchange(fed.address, honest, [hello("honest")], timeout=30)
    assert error is None and frames[0].WhichOneof("kind") == "welcome"
    return listed, time.monotonic() - started


def test_600_hello_less_streams_delay_nobody(fed: LocalFederation) -> None:
    attacker, honest = fed.enroll("attacker"), fed.enroll("honest")
    baseline = _latencies(fed, honest)

    silent = threading.Event()

    def never() -> Iterator[fleet_pb2.EdgeFrame]:
        silent.wait()
        yield from ()

    channels = [make_channel(EdgeConfig(server=fed.address, state_dir=str(attacker))) for _ in range(6)]
    calls = [
        fleet_pb2_grpc.FleetStub(channels[i % len(channels)]).Connect(never(), timeout=60)
        for i in range(STREAMS)
    ]
    try:
        time.sleep(2.0)  # let the streams reach the server
        during = _latencies(fed, honest)
        assert during[0] <= baseline[0] + 1.0, (baseline, during)
        assert during[1] <= baseline[1] + 1.0, (baseline, during)
        time.sleep(HELLO_TIMEOUT + 1.5)
        audit = [
            json.loads(line) for line in (fed.workdir / "server" / "audit.jsonl").read_text().splitlines()
        ]
        assert any(e["event"] == "replaced" and e["node"] == "attacker" for e in audit)
        assert any(e["event"] == "hello-timeout" and e["node"] == "attacker" for e in audit)
        live = [c for c in calls if c.is_active()]
        assert not live, f"{len(live)} Hello-less streams still open after the deadline"
    finally:
        silent.set()
        for call in calls:
            call.cancel()
        for channel in channels:
            channel.close()


def test_a_device_keeps_one_stream(fed: LocalFederation) -> None:
    """A second stream of the same identity replaces the first (a reconnecting device)."""
    device = fed.enroll("edge-twice")
    first = make_channel(EdgeConfig(server=fed.address, state_dir=str(device)))
    release = threading.Event()

    def hello_then_wait() -> Iterator[fleet_pb2.EdgeFrame]:
        yield hello()
        release.wait()

    call = fleet_pb2_grpc.FleetStub(first).Connect(hello_then_wait(), timeout=30)
    try:
        assert next(call).WhichOneof("kind") == "welcome"
        frames, error = exchange(fed.address, device, [hello()], timeout=10)
        assert error is None and frames[0].WhichOneof("kind") == "welcome"
        with pytest.raises(grpc.RpcError) as ended:
            for _ in call:
                pass
        assert ended.value.code() == grpc.StatusCode.CANCELLED
    finally:
        release.set()
        call.cancel()
        first.close()
