"""A device's raw Fleet stream, built on fedge's own channel (mTLS with the enrolled keys) and stubs.

What an attacker holding an enrolled device's keys can do without fedge's daemon: open streams
and send whatever frames it likes, in whatever order.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import grpc

from fedge.client.wire import make_channel
from fedge.config import EdgeConfig
from fedge.protos.v1 import fleet_pb2, fleet_pb2_grpc


def hello(name: str = "attacker") -> fleet_pb2.EdgeFrame:
    return fleet_pb2.EdgeFrame(hello=fleet_pb2.Hello(name=name))


def exchange(
    server: str, state_dir: Path, frames: Iterable[fleet_pb2.EdgeFrame], timeout: float = 10.0
) -> tuple[list[fleet_pb2.ServerFrame], grpc.RpcError | None]:
    """Send ``frames`` on one stream and read until the server ends it or ``timeout``.

    Returns what the server sent and how the stream ended (``None``: it ended cleanly).
    """
    received: list[fleet_pb2.ServerFrame] = []
    with make_channel(EdgeConfig(server=server, state_dir=str(state_dir))) as channel:
        call = fleet_pb2_grpc.FleetStub(channel).Connect(iter(frames), timeout=timeout)
        try:
            for frame in call:
                received.append(frame)
        except grpc.RpcError as exc:
            return received, exc
    return received, None
