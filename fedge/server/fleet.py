"""Fleet service: one bidirectional stream per edge device, each a coroutine on one event loop.

The stream handler is an async generator (the writer) fed by the session's
:class:`~fedge.server.eventloop.Outbox`; a reader task consumes the device's frames. No thread
per stream: the server holds 10,000 of them in one process (bench/fleet_scale.py). Heartbeats
flow both ways so a silent device is declared gone after ``node_timeout`` and its pending
instructions fail at once instead of at the round timeout.

Large messages wait on disk (issue 16): a reply larger than one chunk is reassembled in a spool
file, and a large instruction is read from the run worker's file as it is sent. That file I/O
never runs on the event loop: a 4 MiB write can stall for tens of milliseconds under writeback,
and every stream of the server waits on the loop. One spool I/O thread per service does it, in
order (so a stream's drop of a partial file never overtakes its last write); chunks of small
messages are still handled on the loop, with no thread hop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

import fedge
from fedge.chunks import Assembler, ChunkError, FileSpan, FrameLimits, InflightBudget
from fedge.eligibility import from_proto
from fedge.errors import FedgeError
from fedge.protos.v1 import fleet_pb2, fleet_pb2_grpc
from fedge.security import check_name, device_signing_key
from fedge.server import memory
from fedge.server.admission import StreamAdmission
from fedge.server.audit import AuditLog
from fedge.server.eventloop import DiskFrames, Outbox
from fedge.server.models import ModelHub, PartStream
from fedge.server.relay_role import role_problem
from fedge.server.router import Router, Session
from fedge.server.store import Store
from fedge.server.tls import Gate, peer_of

if TYPE_CHECKING:
    from fedge.server.metrics import ServerMetrics

log = logging.getLogger("fedge.server.fleet")

T = TypeVar("T")


class FleetService(fleet_pb2_grpc.FleetServicer):
    """Accepts device streams and moves instruction/reply chunks."""

    def __init__(
        self,
        store: Store,
        router: Router,
        heartbeat_interval: float,
        node_timeout: float,
        limits: FrameLimits,
        audit: AuditLog,
        gate: Gate,
        admission: StreamAdmission,
        models: ModelHub | None = None,
        metrics: ServerMetrics | None = None,
        budget: InflightBudget | None = None,
        spool: Path | None = None,
    ) -> None:
        self._spool = spool  # where large replies are reassembled (None: in memory)
        self._admission = admission
        self._budget = budget  # partial-message bytes across every device (None: no global cap)
        self._metrics = metrics  # Prometheus counters (fedge.server.metrics); None when off
        self._models = models
        self._gate = gate
        self._limits = limits
        self._audit = audit
        self._store = store
        self._router = router
        self._heartbeat = heartbeat_interval
        self._node_timeout = node_timeout
        # Audit lines are fsynced (~0.5 ms each): written on one thread of their own, in order, so
        # a connect storm of 10,000 devices never stalls the event loop that serves them all.
        self._audit_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedge-fleet-audit")
        # Spool files (reply writes, instruction and model-file reads): off the loop, in order.
        self._io_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedge-fleet-spool")

    async def _on_io(self, call: Callable[..., T], *args: Any) -> T:
        """``call(*args)`` on the spool I/O thread; the stream's task waits, the loop does not.

        If the task is cancelled meanwhile, the call still runs to its end on the thread (the
        next call of the same stream queues behind it), and a spool file it returned is deleted.
        """
        future: Future[T] = self._io_thread.submit(call, *args)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.add_done_callback(_discard_result)
            raise

    async def _from_disk(
        self, frames: Iterable[fleet_pb2.ServerFrame]
    ) -> AsyncIterator[fleet_pb2.ServerFrame]:
        """``frames`` that are read from a file as they are made, each made on the I/O thread."""
        parts = iter(frames)
        try:
            while True:
                part = await self._on_io(next, parts, None)
                if part is None:
                    return
                yield part
        finally:  # closes the file (and runs PartStream's done) after any read still running
            close = getattr(parts, "close", None)
            if close is not None:
                self._io_thread.submit(close)

    def close(self) -> None:
        """Write the audit lines still queued (after the gRPC server stopped: no new ones come)."""
        self._audit_thread.shutdown(wait=True)

    async def _audited(self, event: str, **fields: Any) -> None:
        """:meth:`AuditLog.write` off the event loop; returns once the line is written."""
        write = functools.partial(self._audit.write, event, **fields)
        await asyncio.get_running_loop().run_in_executor(self._audit_thread, write)

    async def Connect(  # noqa: N802 (gRPC method name)
        self, request_iterator: AsyncIterator[fleet_pb2.EdgeFrame], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[fleet_pb2.ServerFrame]:
        # Counted under its certificate's name before any frame is read (see fedge.server.admission).
        peer = peer_of(context) if self._gate.enabled else None
        identity = peer.name if peer is not None else ""
        handle = _Handle(context.peer())
        if not self._admission.admit(handle, identity):
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, "the server holds too many device streams"
            )
        try:
            async for frame in self._serve(request_iterator, context, handle):
                yield frame
        except asyncio.CancelledError:
            if not handle.cancelled:
                raise
            # Admission ended it (replaced, or no Hello in time): the device must hear so, as a
            # cancelled handler alone leaves the call open until the device's deadline.
            await context.abort(grpc.StatusCode.CANCELLED, "stream replaced or no hello in time")
        finally:
            self._admission.release(handle, identity)

    async def _serve(
        self,
        request_iterator: AsyncIterator[fleet_pb2.EdgeFrame],
        context: grpc.aio.ServicerContext,
        handle: _Handle,
    ) -> AsyncIterator[fleet_pb2.ServerFrame]:
        try:
            first = await anext(aiter(request_iterator))
        except (StopAsyncIteration, grpc.RpcError):
            return
        self._admission.hello(handle)
        if first.WhichOneof("kind") != "hello":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first frame must be hello")
        peer = peer_of(context)
        signing_pub = b""
        if self._gate.enabled:
            # Identity is the verified certificate subject; the name in Hello is only a claim.
            if peer is None:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a client certificate is required")
                return
            if self._gate.revoked(peer):
                await self._audited(
                    "refused", node=peer.name, reason="certificate revoked", peer=context.peer()
                )
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED, f"certificate of {peer.name!r} is revoked"
                )
            name = peer.name
            try:
                signing_pub = device_signing_key(peer.cert_pem).public_bytes(Encoding.Raw, PublicFormat.Raw)
            except FedgeError:
                await self._audited(
                    "refused", node=name, reason="not a device certificate", peer=context.peer()
                )
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED, f"{name!r} does not hold a device certificate"
                )
                return
            problem = role_problem(peer.cert_pem, first.hello.capabilities)
            if problem is not None:  # fedge.server.relay_role: the claim must match the certificate
                await self._audited("refused", node=name, reason=problem, peer=context.peer())
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{name!r}: {problem}")
                return
        else:
            name = first.hello.name
        try:
            check_name(name, "node name")
        except FedgeError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.message[:200])
        node_id = self._store.node_id_for(name, context.peer())
        outbox = Outbox(asyncio.get_running_loop())
        session = Session(
            signing_pub=signing_pub,
            node_id=node_id,
            name=name,
            peer=context.peer(),
            cert_pem=peer.cert_pem if peer else b"",
            capabilities=tuple(first.hello.capabilities),
            accelerator=first.hello.accelerator[:64],
            properties=from_proto(first.hello.properties, first.hello.accelerator),
            outbox=outbox,
        )
        self._router.open(session)
        if self._models is not None:
            self._models.on_connect(session)  # after open: a concurrent publish cannot be missed
        await self._audited("connect", node=name, node_id=node_id, peer=context.peer())
        if self._metrics is not None:
            self._metrics.connections.inc()
            self._metrics.received_bytes.inc(first.ByteSize())  # the hello
        log.info("node connected", extra={"node": name, "node_id": node_id, "peer": context.peer()})
        reader = asyncio.create_task(self._read(session, request_iterator), name=f"fleet-read-{name}")
        reason = "stream closed"
        try:
            yield self._sent(
                fleet_pb2.ServerFrame(
                    welcome=fleet_pb2.Welcome(
                        node_id=node_id, heartbeat_interval=self._heartbeat, server_version=fedge.__version__
                    )
                )
            )
            while not context.done() and not session.closed.is_set():
                try:
                    frame = await outbox.next(self._heartbeat)
                except TimeoutError:
                    if time.monotonic() - session.last_seen > self._node_timeout:
                        reason = f"no heartbeat for {self._node_timeout:.0f} s"
                        break
                    frame = fleet_pb2.ServerFrame(heartbeat=fleet_pb2.Heartbeat(sent_at=time.time()))
                if frame is None:
                    break
                if isinstance(frame, (DiskFrames, PartStream)):  # read from a file part by part
                    async for part in self._from_disk(frame):
                        yield self._sent(part)
                    continue
                if not isinstance(frame, fleet_pb2.ServerFrame):  # frames made lazily in memory
                    for part in frame:
                        yield self._sent(part)
                    continue
                yield self._sent(frame)
        finally:
            reader.cancel()
            if session.violation == "certificate revoked":
                reason = session.violation
            elif session.violation:
                reason = f"protocol violation: {session.violation}"
            elif session.closed.is_set() and reason == "stream closed":
                reason = "node disconnected"
            self._router.close(session, reason)
            self._store.touch_node(node_id)
            await self._audited("disconnect", node=name, node_id=node_id, reason=reason)
            log.info("node disconnected", extra={"node": name, "node_id": node_id, "reason": reason})
        # After the bookkeeping: a device that learns why its stream ended finds it audited.
        if session.violation == "certificate revoked":
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, reason)
        elif session.violation:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, reason)

    def _sent(self, frame: fleet_pb2.ServerFrame) -> fleet_pb2.ServerFrame:
        if self._metrics is not None:
            self._metrics.sent_bytes.inc(frame.ByteSize())
        return frame

    async def _read(self, session: Session, frames: AsyncIterator[fleet_pb2.EdgeFrame]) -> None:
        """Reassemble reply chunks and hand complete replies to the router.

        A peer that breaks the chunking protocol or a limit loses its stream (with the reason);
        it never gets to make the server allocate without bound.
        """
        assembler = Assembler(self._limits, self._budget, self._spool)
        reason = "node disconnected"
        on_io = False  # whether this stream's assembler was ever used from the I/O thread
        try:
            async for frame in frames:
                session.last_seen = time.monotonic()
                if self._metrics is not None:
                    self._metrics.received_bytes.inc(frame.ByteSize())
                kind = frame.WhichOneof("kind")
                if kind == "heartbeat" and frame.heartbeat.HasField("properties"):
                    session.properties = from_proto(frame.heartbeat.properties, session.accelerator)
                if kind in ("model_request", "model_status") and self._models is not None:
                    if kind == "model_request":
                        self._models.on_request(session, frame.model_request)
                    else:
                        self._models.on_status(session, frame.model_status)
                if kind != "reply":
                    continue
                chunk = frame.reply
                add = (chunk.message_id, chunk.index, chunk.total, chunk.data)
                if assembler.touches_file(chunk.message_id, chunk.index, len(chunk.data)):
                    on_io = True
                    data = await self._on_io(assembler.add, *add)
                else:
                    data = assembler.add(*add)
                if data is not None and not self._router.deliver(session.node_id, chunk.message_id, data):
                    if isinstance(data, FileSpan):
                        self._io_thread.submit(data.discard)
                    # Nobody waits for it from this node: unsolicited, late, duplicate or another's.
                    await self._audited(
                        "reply-dropped",
                        node=session.name,
                        node_id=session.node_id,
                        message_id=chunk.message_id,
                        reason="unsolicited, late, duplicate or for another node",
                    )
        except ChunkError as exc:
            session.violation = reason = exc.reason
            await self._audited(
                "violation", node=session.name, node_id=session.node_id, reason=exc.reason, detail=exc.message
            )
            log.warning("closing stream: %s", exc.message, extra={"node": session.name})
        except grpc.RpcError as exc:
            # grpc keeps the error it raised (its call state lists it), and the error's traceback
            # holds this frame: without these two lines the partial messages outlived the stream.
            exc.__traceback__ = None
        except asyncio.CancelledError:
            pass  # the writer ended the stream; the finally below still runs
        finally:
            if on_io:  # after an add that may still run on the I/O thread, never beside it
                self._io_thread.submit(lambda: memory.released(assembler.clear()))
            else:
                memory.released(assembler.clear())
            self._router.close(session, reason)


def _discard_result(future: Future[Any]) -> None:
    """Delete the spool file a call returned after nobody waited for it any more."""
    if not future.cancelled() and future.exception() is None and isinstance(future.result(), FileSpan):
        future.result().discard()


class _Handle:
    """A stream as admission sees it: its peer, and a ``cancel`` safe from the watcher thread."""

    def __init__(self, peer: str) -> None:
        self._peer = peer
        self.cancelled = False  # set by cancel(): the handler's CancelledError is admission's
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()

    def peer(self) -> str:
        return self._peer

    def cancel(self) -> None:
        self.cancelled = True
        if self._task is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._task.cancel)
