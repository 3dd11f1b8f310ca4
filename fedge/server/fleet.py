"""Fleet service: one bidirectional stream per edge device.

The stream handler is a generator (the writer) fed by the session's outbox; a reader thread
consumes the device's frames. Heartbeats flow both ways so a silent device is declared gone
after ``node_timeout`` and its pending instructions fail at once instead of at the round timeout.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections.abc import Iterator

import grpc

import fedge
from fedge.protos.v1 import fleet_pb2, fleet_pb2_grpc
from fedge.server.router import Router, Session
from fedge.server.store import Store

log = logging.getLogger("fedge.server.fleet")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_MESSAGE_BYTES = 2 * 1024**3


class FleetService(fleet_pb2_grpc.FleetServicer):
    """Accepts device streams and moves instruction/reply chunks."""

    def __init__(self, store: Store, router: Router, heartbeat_interval: float, node_timeout: float) -> None:
        self._store = store
        self._router = router
        self._heartbeat = heartbeat_interval
        self._node_timeout = node_timeout

    def Connect(  # noqa: N802 (gRPC method name)
        self, request_iterator: Iterator[fleet_pb2.EdgeFrame], context: grpc.ServicerContext
    ) -> Iterator[fleet_pb2.ServerFrame]:
        try:
            first = next(request_iterator)
        except (StopIteration, grpc.RpcError):
            return
        if first.WhichOneof("kind") != "hello":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first frame must be hello")
        name = first.hello.name
        if not _NAME.match(name):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid node name {name[:64]!r}")
        node_id = self._store.node_id_for(name, context.peer())
        session = Session(node_id=node_id, name=name, peer=context.peer())
        self._router.open(session)
        log.info("node connected", extra={"node": name, "node_id": node_id, "peer": context.peer()})
        reader = threading.Thread(
            target=self._read, args=(session, request_iterator), daemon=True, name=f"fleet-read-{name}"
        )
        reader.start()
        reason = "stream closed"
        try:
            yield fleet_pb2.ServerFrame(
                welcome=fleet_pb2.Welcome(
                    node_id=node_id, heartbeat_interval=self._heartbeat, server_version=fedge.__version__
                )
            )
            while context.is_active() and not session.closed.is_set():
                try:
                    frame = session.outbox.get(timeout=self._heartbeat)
                except queue.Empty:
                    if time.monotonic() - session.last_seen > self._node_timeout:
                        reason = f"no heartbeat for {self._node_timeout:.0f} s"
                        break
                    frame = fleet_pb2.ServerFrame(heartbeat=fleet_pb2.Heartbeat(sent_at=time.time()))
                if frame is None:
                    break
                yield frame
        finally:
            if session.closed.is_set() and reason == "stream closed":
                reason = "node disconnected"
            self._router.close(session, reason)
            self._store.touch_node(node_id)
            log.info("node disconnected", extra={"node": name, "node_id": node_id, "reason": reason})

    def _read(self, session: Session, frames: Iterator[fleet_pb2.EdgeFrame]) -> None:
        """Reassemble reply chunks and hand complete replies to the router."""
        parts: dict[str, list[bytes]] = {}
        sizes: dict[str, int] = {}
        try:
            for frame in frames:
                session.last_seen = time.monotonic()
                if frame.WhichOneof("kind") != "reply":
                    continue
                chunk = frame.reply
                got = parts.setdefault(chunk.message_id, [])
                sizes[chunk.message_id] = sizes.get(chunk.message_id, 0) + len(chunk.data)
                if (
                    chunk.index != len(got)
                    or chunk.total < 1
                    or chunk.index >= chunk.total
                    or sizes[chunk.message_id] > MAX_MESSAGE_BYTES
                ):
                    log.warning(
                        "dropping malformed reply", extra={"node": session.name, "message": chunk.message_id}
                    )
                    parts.pop(chunk.message_id, None)
                    sizes.pop(chunk.message_id, None)
                    continue
                got.append(chunk.data)
                if len(got) == chunk.total:
                    data = b"".join(parts.pop(chunk.message_id))
                    sizes.pop(chunk.message_id, None)
                    self._router.deliver(session.node_id, chunk.message_id, data)
        except grpc.RpcError:
            pass
        finally:
            self._router.close(session, "node disconnected")
