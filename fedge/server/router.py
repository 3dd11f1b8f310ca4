"""Routes Flower messages between run workers and device streams in the server process.

One :class:`Session` per connected device holds its outbox (frames the stream writer sends).
Instructions wait in :class:`Router` until the device replies, or until the device is gone — then
the waiter learns at once, so rounds end as soon as every sampled device answered or vanished.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from fedge.chunks import FileSpan, OpenSpan, Piece, open_spans, split
from fedge.eligibility import DeviceProperties
from fedge.protos.v1 import fleet_pb2
from fedge.server.eventloop import DiskFrames
from fedge.server.grid import Outcome, Payload


@dataclass
class Session:
    """One live Fleet stream."""

    node_id: int
    name: str
    peer: str
    # Frames for the stream writer; an iterable of frames (a model file read lazily, see
    # fedge.server.models.PartStream) is written frame by frame.
    outbox: queue.Queue[fleet_pb2.ServerFrame | Iterable[fleet_pb2.ServerFrame] | None] = field(
        default_factory=queue.Queue
    )
    last_seen: float = field(default_factory=time.monotonic)
    closed: threading.Event = field(default_factory=threading.Event)
    # Set when the device broke the protocol or a limit: the stream is aborted with this reason.
    violation: str = ""
    # The TLS client certificate the stream was opened with (empty in plaintext mode).
    cert_pem: bytes = b""
    # Raw Ed25519 key from the device certificate: verifies its sealed replies.
    signing_pub: bytes = b""
    # Capabilities the device announced in Hello (e.g. "models-v1").
    capabilities: tuple[str, ...] = ()
    # The device the daemon trains on, as it announced it in Hello ("" from older daemons).
    accelerator: str = ""
    # What the device last reported (Hello, then each heartbeat): runs sample by it.
    properties: DeviceProperties = field(default_factory=DeviceProperties)

    def close(self) -> None:
        """Ask the stream writer to end this stream."""
        self.closed.set()
        self.outbox.put(None)


def chunk_frames(
    message_id: str, data: Piece | Sequence[Piece], run: fleet_pb2.RunContext
) -> Iterator[fleet_pb2.ServerFrame]:
    """Instruction frames of one serialized message (the first carries the run), made lazily.

    Lazily, because the stream writer pulls them as gRPC sends: a broadcast to many devices then
    holds the (shared) message once plus a chunk per stream, not one chunked copy per device.
    Each chunk is filled in place inside its frame: ``ServerFrame(instruction=Chunk(...))`` would
    copy the chunk's data once more (see :func:`fedge.client.wire.reply_frames`).
    """
    for index, total, piece in split(data):
        frame = fleet_pb2.ServerFrame()
        chunk = frame.instruction
        chunk.message_id, chunk.index, chunk.total, chunk.data = message_id, index, total, piece
        if index == 0:
            chunk.run.CopyFrom(run)
        yield frame


class Router:
    """Thread-safe registry of sessions and of instructions awaiting replies."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._sessions: dict[int, Session] = {}
        self._pending: dict[str, int] = {}  # message_id -> node_id
        self._done: dict[str, Outcome] = {}

    # -- sessions ---------------------------------------------------------------------------
    def open(self, session: Session) -> Session | None:
        """Register a stream; returns the older stream of the same node, which must close."""
        with self._lock:
            old = self._sessions.get(session.node_id)
            self._sessions[session.node_id] = session
        if old is not None:
            self._fail_node(old.node_id, "node reconnected; earlier instructions were lost")
            old.close()
        return old

    def close(self, session: Session, reason: str) -> None:
        """Unregister a stream whose device is gone; fail what it still owed."""
        with self._lock:
            if self._sessions.get(session.node_id) is not session:
                return
            del self._sessions[session.node_id]
        self._fail_node(session.node_id, reason)
        session.close()

    def node_ids(self) -> list[int]:
        with self._lock:
            return sorted(self._sessions)

    def sessions(self) -> list[Session]:
        with self._lock:
            return list(self._sessions.values())

    def session(self, node_id: int) -> Session | None:
        with self._lock:
            return self._sessions.get(node_id)

    # -- messages ---------------------------------------------------------------------------
    def push(self, run: fleet_pb2.RunContext, items: list[tuple[str, int, Payload]]) -> None:
        """Queue instructions on their devices' streams (unknown devices fail at once).

        Parts a run worker left in files (:class:`fedge.chunks.FileSpan`) are opened once per
        file and the files deleted at once: each stream then reads its chunks from the open file
        as it sends them, and the file's space goes when the last stream is done with it.
        """
        spans = [p for _, _, data in items if isinstance(data, list) for p in data if isinstance(p, FileSpan)]
        opened = iter(open_spans(spans))
        items = [
            (
                m,
                n,
                [next(opened) if isinstance(p, FileSpan) else p for p in data]
                if isinstance(data, list)
                else data,
            )
            for m, n, data in items
        ]
        for message_id, node_id, data in items:
            with self._lock:
                session = self._sessions.get(node_id)
                if session is None:
                    self._done[message_id] = Outcome(reason=f"node {node_id} is not connected")
                    self._lock.notify_all()
                    continue
                self._pending[message_id] = node_id
            frames = chunk_frames(message_id, data, run)
            on_disk = isinstance(data, list) and any(isinstance(p, OpenSpan) for p in data)
            session.outbox.put(DiskFrames(frames) if on_disk else frames)

    def deliver(self, node_id: int, message_id: str, data: bytes | FileSpan) -> bool:
        """Record a device's reply; replies nobody waits for (or from the wrong node) are dropped."""
        with self._lock:
            if self._pending.get(message_id) != node_id:
                return False
            del self._pending[message_id]
            session = self._sessions.get(node_id)
            self._done[message_id] = Outcome(data=data, signer=session.signing_pub if session else b"")
            self._lock.notify_all()
        return True

    def wait(self, message_ids: list[str], timeout: float | None, first: bool = False) -> dict[str, Outcome]:
        """Block until every id is resolved or ``timeout`` passes; return (and forget) the resolved.

        ``first``: return as soon as any id is resolved, so a streaming consumer can fold each
        reply while the others are still in flight (the router then holds only those).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        wanted = set(message_ids)
        with self._lock:
            while True:
                done = sum(1 for m in wanted if m in self._done)
                if done == len(wanted) or (first and done):
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._lock.wait(remaining)
            resolved = {m: self._done.pop(m) for m in wanted if m in self._done}
            for m in wanted - set(resolved):
                if timeout is not None and timeout > 0 and not first:
                    self._pending.pop(m, None)  # the waiter gave up on it
        return resolved

    def _fail_node(self, node_id: int, reason: str) -> None:
        with self._lock:
            lost = [m for m, n in self._pending.items() if n == node_id]
            for m in lost:
                del self._pending[m]
                self._done[m] = Outcome(reason=reason)
            if lost:
                self._lock.notify_all()
