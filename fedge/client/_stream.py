"""One Fleet stream's sending side, and the app thread that answers instructions.

Why a separate app thread: the stream must keep being read while a ClientApp trains (server
heartbeats, the silence watchdog), yet flwr's TaskIdentity is process-global, so exactly one
thread runs ClientApp calls, one at a time. It outlives reconnects so the app stays warm; each
reply goes back on the stream its instruction came from, or is dropped if that stream is gone
(the server has failed the instruction by then).
"""

from __future__ import annotations

import gc
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedge.chunks import FileSpan, FrameLimits
from fedge.protos.v1 import fleet_pb2

from .runtime import ClientRuntime
from .wire import Instruction, Reassembler, reply_frames

log = logging.getLogger("fedge.client.daemon")

DEFAULT_HEARTBEAT = 5.0  # used when a Welcome carries no interval
LARGE_MESSAGE = 32 * 1024 * 1024  # instructions from this size on start with a garbage collection


class Stream:
    """One Connect stream: its outbox, reassembler and liveness clock."""

    def __init__(
        self,
        on_sent: Callable[[int], None] | None = None,
        limits: FrameLimits | None = None,
        spool: Path | None = None,
    ) -> None:
        self._on_sent = on_sent  # told each frame's size as gRPC takes it (metrics)
        # A frame, or frames made as gRPC asks for them (a reply, chunked lazily).
        self.outbox: queue.Queue[fleet_pb2.EdgeFrame | Iterator[fleet_pb2.EdgeFrame] | None] = queue.Queue()
        self.reassembler = Reassembler(limits, spool)
        self.call: Any = None
        self.started = self.last_rx = time.monotonic()
        self.heartbeat_interval = DEFAULT_HEARTBEAT
        self.welcomed = threading.Event()
        self.closed = threading.Event()  # the stream has ended (reader done)
        self.wake = threading.Event()  # pokes the ticker: stop, task done, welcome, close
        self._lock = threading.Lock()
        self._send_closed = False
        self.reason = ""  # why we ended the stream ourselves, for the disconnect log line

    def requests(self) -> Iterator[fleet_pb2.EdgeFrame]:
        """The request iterator handed to gRPC: ends at :meth:`half_close`."""
        while (item := self.outbox.get()) is not None:
            for frame in [item] if isinstance(item, fleet_pb2.EdgeFrame) else item:
                if self._on_sent is not None:
                    self._on_sent(frame.ByteSize())
                yield frame

    def send(self, *frames: fleet_pb2.EdgeFrame | Iterator[fleet_pb2.EdgeFrame]) -> bool:
        """Queue frames contiguously; False once the sending side is closed."""
        with self._lock:
            if self._send_closed:
                return False
            for frame in frames:
                self.outbox.put(frame)
            return True

    @property
    def open_for_send(self) -> bool:
        """False once we half-closed or cancelled: a reply would have nowhere to go."""
        return not self._send_closed

    def half_close(self) -> None:
        """End our request stream after what is already queued (the server then ends its side)."""
        with self._lock:
            if not self._send_closed:
                self._send_closed = True
                self.outbox.put(None)

    def cancel(self, reason: str = "") -> None:
        """Abort the stream now (dead connection, handshake timeout); ``reason`` is logged."""
        self.reason = self.reason or reason
        self.half_close()
        if self.call is not None:
            self.call.cancel()


@dataclass
class PendingInstruction:
    """An instruction and the stream its reply must go back on."""

    session: Stream
    instruction: Instruction


class AppThread:
    """The app thread: runs one instruction at a time and sends its reply on its stream."""

    def __init__(
        self, runtime: ClientRuntime, stopping: threading.Event, on_done: Callable[[], None]
    ) -> None:
        self._runtime, self._stopping, self._on_done = runtime, stopping, on_done
        self._queue: queue.Queue[PendingInstruction | None] = queue.Queue()
        self._cond = threading.Condition()
        self._pending = 0  # queued + running
        self.done = 0
        self._thread = threading.Thread(target=self._run, name="fedge-edge-task", daemon=True)

    def start(self) -> None:
        """Start the app thread (once, for the daemon's lifetime)."""
        self._thread.start()

    def close(self) -> None:
        """End the app thread after the queued tasks (skipped if stopping)."""
        self._queue.put(None)

    def submit(self, task: PendingInstruction) -> None:
        """Queue an instruction; the reader thread never blocks on a running task."""
        with self._cond:
            self._pending += 1
        self._queue.put(task)

    @property
    def busy(self) -> bool:
        """True while a task is queued or running."""
        return self._pending > 0

    def _run(self) -> None:
        while (task := self._queue.get()) is not None:
            try:
                if self._stopping.is_set():
                    log.debug("stopping: instruction %s not started", task.instruction.message_id)
                elif not task.session.open_for_send:  # its stream died while it waited
                    log.info("instruction %s skipped: its stream is gone", task.instruction.message_id)
                else:
                    self._execute(task)
            except Exception:  # a bug here must not kill the only app thread
                log.exception("internal error while handling instruction %s", task.instruction.message_id)
            finally:
                if isinstance(task.instruction.data, FileSpan):
                    task.instruction.data.discard()  # the spooled instruction, read or not
                with self._cond:
                    self._pending -= 1
                    self._cond.notify_all()
                self._on_done()

    def _execute(self, task: PendingInstruction) -> None:
        ins = task.instruction
        started = time.monotonic()
        if isinstance(ins.data, FileSpan) and ins.data.length >= LARGE_MESSAGE:
            # The last task's Messages sit in reference cycles, and with them its reply's
            # sealed bytes: collect them before this model is decoded, not after (issue 16).
            gc.collect()
        try:
            payload = self._runtime.handle_frames(ins.data, ins.run_config_json, ins.announcement, ins.round)
        except Exception as exc:  # undecodable bytes: there is no Message to reply to
            log.error("dropping undecodable instruction %s: %s", ins.message_id, exc)
            return
        self.done += 1
        if task.session.send(reply_frames(ins.message_id, payload)):
            log.debug(
                "replied to %s in %.3fs (%d bytes)",
                ins.message_id,
                time.monotonic() - started,
                sum(len(f) for f in payload),
            )
        else:
            log.warning("reply to %s dropped: its stream closed while the task ran", ins.message_id)
