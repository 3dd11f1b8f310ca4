"""A test-only Fleet server: real gRPC on 127.0.0.1, welcomes, pushes instructions, collects replies.

It implements the wire contract of protos/fedge/v1/fleet.proto independently of fedge.server, so
the edge daemon's tests do not depend on the real server (written concurrently).
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from flwr.app import Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedge.codec import decode_message, encode_message
from fedge.protos.v1 import fleet_pb2, fleet_pb2_grpc

CHUNK = 4 * 1024 * 1024 - 64 * 1024
OPTIONS = [("grpc.max_send_message_length", 16 << 20), ("grpc.max_receive_message_length", 16 << 20)]


def wait_for(predicate: Callable[[], bool], timeout: float, what: str = "condition") -> None:
    """Poll ``predicate`` until true (for conditions in another process, e.g. a file)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def make_instruction(content: RecordDict, node_id: int, message_type: str, run_id: int) -> Message:
    """Build an instruction the way a Flower ServerApp/Grid does (TaskIdentity of the server)."""
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = 1  # Flower's SUPERLINK_NODE_ID
    msg = Message(content, dst_node_id=node_id, message_type=message_type)
    msg.metadata.__dict__["_message_id"] = msg.object_id  # as Flower's grids do
    return msg


@dataclass
class _Stream:
    hello: fleet_pb2.Hello
    outbox: queue.Queue[fleet_pb2.ServerFrame | None] = field(default_factory=queue.Queue)
    heartbeats: int = 0
    ended: threading.Event = field(default_factory=threading.Event)


class FakeFleet(fleet_pb2_grpc.FleetServicer):
    """A minimal Fleet server for one device at a time (the latest stream gets instructions)."""

    def __init__(
        self,
        port: int = 0,
        node_id: int = 4242,
        heartbeat_interval: float = 1.0,
        send_heartbeats: bool = True,
    ) -> None:
        self.node_id, self.heartbeat_interval = node_id, heartbeat_interval
        self.send_heartbeats = send_heartbeats
        self.streams: list[_Stream] = []
        self.reply_chunks: list[fleet_pb2.Chunk] = []
        self._replies: dict[str, bytes] = {}
        self._cond = threading.Condition()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=OPTIONS)
        fleet_pb2_grpc.add_FleetServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port(f"127.0.0.1:{port}")
        assert self.port, "could not bind"
        self.address = f"127.0.0.1:{self.port}"

    def start(self) -> FakeFleet:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=None).wait(5)

    # -- gRPC ---------------------------------------------------------------------------------
    def Connect(
        self,
        request_iterator: Iterator[fleet_pb2.EdgeFrame],  # noqa: N802
        context: grpc.ServicerContext,
    ) -> Iterator[fleet_pb2.ServerFrame]:
        first = next(request_iterator)
        assert first.WhichOneof("kind") == "hello", first
        stream = _Stream(first.hello)
        context.add_callback(lambda: stream.outbox.put(None))
        with self._cond:
            self.streams.append(stream)
            self._cond.notify_all()
        threading.Thread(target=self._read, args=(stream, request_iterator), daemon=True).start()
        yield fleet_pb2.ServerFrame(
            welcome=fleet_pb2.Welcome(
                node_id=self.node_id, heartbeat_interval=self.heartbeat_interval, server_version="fake"
            )
        )
        while True:
            try:
                frame = stream.outbox.get(timeout=self.heartbeat_interval)
            except queue.Empty:
                if not self.send_heartbeats:
                    continue
                frame = fleet_pb2.ServerFrame(heartbeat=fleet_pb2.Heartbeat(sent_at=time.time()))
            if frame is None:
                return
            yield frame

    def _read(self, stream: _Stream, frames: Iterator[fleet_pb2.EdgeFrame]) -> None:
        parts: dict[str, list[bytes]] = {}
        try:
            for frame in frames:
                kind = frame.WhichOneof("kind")
                with self._cond:
                    if kind == "heartbeat":
                        stream.heartbeats += 1
                    elif kind == "reply":
                        chunk = frame.reply
                        self.reply_chunks.append(chunk)
                        got = parts.setdefault(chunk.message_id, [])
                        assert chunk.index == len(got), (chunk.index, len(got))
                        got.append(chunk.data)
                        if len(got) == chunk.total:
                            self._replies[chunk.message_id] = b"".join(parts.pop(chunk.message_id))
                    self._cond.notify_all()
        except grpc.RpcError:
            pass
        finally:
            stream.ended.set()
            stream.outbox.put(None)  # the edge half-closed: end our side too
            with self._cond:
                self._cond.notify_all()

    # -- test API -----------------------------------------------------------------------------
    def wait_streams(self, count: int, timeout: float) -> _Stream:
        """Wait until ``count`` streams have said hello; returns the latest."""
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.streams) >= count, timeout), "no hello"
            return self.streams[-1]

    def wait_heartbeats(self, count: int, timeout: float) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: self.streams and self.streams[-1].heartbeats >= count, timeout)

    def send(self, msg: Message, run_config: dict[str, object] | None = None) -> str:
        """Push ``msg`` as instruction chunks on the latest stream; returns the transport id."""
        data = encode_message(msg)
        message_id = uuid.uuid4().hex
        total = max(1, -(-len(data) // CHUNK))
        stream = self.wait_streams(1, 10)
        for i in range(total):
            piece = data[i * CHUNK : (i + 1) * CHUNK]
            chunk = fleet_pb2.Chunk(message_id=message_id, index=i, total=total, data=piece)
            if i == 0:
                chunk.run.CopyFrom(
                    fleet_pb2.RunContext(
                        run_id=msg.metadata.run_id, run_config_json=json.dumps(run_config or {})
                    )
                )
            stream.outbox.put(fleet_pb2.ServerFrame(instruction=chunk))
        return message_id

    def wait_reply(self, message_id: str, timeout: float = 10) -> Message:
        with self._cond:
            got = self._cond.wait_for(lambda: message_id in self._replies, timeout)
            assert got, f"no reply to {message_id}"
            data = self._replies[message_id]
        return decode_message(data)

    def replied(self, message_id: str) -> bool:
        with self._cond:
            return message_id in self._replies
