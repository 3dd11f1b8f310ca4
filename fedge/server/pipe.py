"""The pipe between a run's worker process and the server process: both ends, one protocol.

Why request ids: the ServerApp in the worker may call its Grid from several threads at once
(Flower's compat layer polls ``get_node_ids`` from a thread while another waits for replies, and
``ServerApp(server_fn=...)`` sends from one thread per client). A bare send-then-receive on one
``Connection`` hands one thread's answer to another. So every request carries an id; on the worker
one reader thread hands each :class:`Reply` to the caller waiting for that id
(:class:`PipeLink`), and on the server :class:`PipeServer` answers blocking ``Wait`` requests on
their own threads, so a long wait never holds up ``NodeIds`` or ``Push`` (docs/architecture.md,
"Processes").

Requests are the dataclasses below; anything else is refused with a clear error, never dropped.
``Event`` is one-way (no reply): run progress and screening results going to the run manager.
"""

from __future__ import annotations

import itertools
import logging
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Protocol

from fedge.errors import FedgeError
from fedge.server.grid import Outcome, Payload

log = logging.getLogger("fedge.server.pipe")


@dataclass(frozen=True)
class NodeIds:
    """Which nodes are connected now. Reply: ``list[int]``."""


@dataclass(frozen=True)
class Push:
    """Queue instructions on their devices' streams. Reply: ``None`` once queued."""

    items: list[tuple[str, int, Payload]]
    round: int
    announcement: bytes


@dataclass(frozen=True)
class Wait:
    """Outcomes of instructions, as :meth:`fedge.server.router.Router.wait`. Reply: ``dict[str, Outcome]``."""

    message_ids: list[str]
    timeout: float | None
    first: bool = False


@dataclass(frozen=True)
class Event:
    """One-way: a run event (``run-started``, ``round-finished``, ``update-rejected``, …)."""

    kind: str
    data: dict[str, Any] = field(default_factory=dict)


Request = NodeIds | Push | Wait


@dataclass(frozen=True)
class Call:
    """A request on the wire, with the id its reply will carry."""

    request_id: int
    request: Request


@dataclass(frozen=True)
class Reply:
    """The answer to :class:`Call` ``request_id``: ``value``, or ``error`` when it failed."""

    request_id: int
    value: Any = None
    error: str = ""


class PipeLink:
    """Worker end: the grid's :class:`fedge.server.grid.Link`, safe for any number of threads."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._waiting: dict[int, Future[Reply]] = {}
        self._lock = threading.Lock()
        self._closed = ""
        self._reader = threading.Thread(target=self._read, daemon=True, name="fedge-pipe-reader")
        self._reader.start()

    def node_ids(self) -> list[int]:
        value: list[int] = self.call(NodeIds())
        return value

    def push(self, items: list[tuple[str, int, Payload]], round: int, announcement: bytes) -> None:
        self.call(Push(items, round, announcement))

    def wait(self, message_ids: list[str], timeout: float | None, first: bool = False) -> dict[str, Outcome]:
        value: dict[str, Outcome] = self.call(Wait(message_ids, timeout, first))
        return value

    def event(self, kind: str, data: dict[str, Any]) -> None:
        self._send(Event(kind, data))

    def call(self, request: Request) -> Any:
        """Send ``request`` and block until its own reply arrives; a refused request raises."""
        future: Future[Reply] = Future()
        with self._lock:
            if self._closed:
                raise FedgeError(f"the server process is gone ({self._closed})", "see the server log (-v)")
            request_id = next(self._ids)
            self._waiting[request_id] = future
        try:
            self._send(Call(request_id, request))
        except BaseException:
            with self._lock:
                self._waiting.pop(request_id, None)
            raise
        reply = future.result()
        if reply.error:
            raise FedgeError(
                f"the server refused a run-worker request: {reply.error}", "see the server log (-v)"
            )
        return reply.value

    def close(self) -> None:
        self._conn.close()

    def _send(self, item: Call | Event) -> None:
        with self._send_lock:
            self._conn.send(item)

    def _read(self) -> None:
        """Hand every reply to the caller waiting for its id, until the pipe closes."""
        reason = "pipe closed"
        try:
            while True:
                reply = self._conn.recv()
                with self._lock:
                    future = self._waiting.pop(getattr(reply, "request_id", -1), None)
                if future is None:
                    log.error("run worker: reply to no pending request dropped: %r", type(reply).__name__)
                    continue
                future.set_result(reply)
        except (EOFError, OSError) as exc:
            reason = f"pipe closed: {type(exc).__name__}"
        with self._lock:
            self._closed = reason
            waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            future.set_result(Reply(-1, error=f"the server process is gone ({reason})"))


class Endpoint(Protocol):
    """What the server process does for one run's worker (fedge.server.runs binds it to a run)."""

    def node_ids(self) -> list[int]: ...

    def push(self, items: list[tuple[str, int, Payload]], round: int, announcement: bytes) -> None: ...

    def wait(self, message_ids: list[str], timeout: float | None, first: bool) -> dict[str, Outcome]: ...

    def event(self, kind: str, data: dict[str, Any]) -> None: ...


class PipeServer:
    """Server end: answers one worker's requests until the pipe closes.

    ``NodeIds`` and ``Push`` are answered in order on the serving thread (so a ``Wait`` sent after
    a ``Push`` sees its messages); ``Wait`` blocks, so each runs on its own thread. Events are
    handled in the order they were sent.
    """

    def __init__(self, conn: Connection, endpoint: Endpoint) -> None:
        self._conn = conn
        self._endpoint = endpoint
        self._send_lock = threading.Lock()

    def serve(self) -> None:
        """Until the worker closes its end (or exits)."""
        try:
            while True:
                item = self._conn.recv()
                if isinstance(item, Event):
                    self._endpoint.event(item.kind, item.data)
                elif isinstance(item, Call) and isinstance(item.request, Wait):
                    threading.Thread(target=self._answer, args=(item,), daemon=True).start()
                elif isinstance(item, Call):
                    self._answer(item)
                else:
                    log.error("run worker sent an unknown pipe message: %s", type(item).__name__)
        except (EOFError, OSError):
            pass

    def _answer(self, call: Call) -> None:
        try:
            reply = Reply(call.request_id, value=self._handle(call.request))
        except FedgeError as exc:
            reply = Reply(call.request_id, error=exc.message)
        except Exception as exc:  # the worker must hear of it, not wait forever
            log.exception("run worker request %s failed", type(call.request).__name__)
            reply = Reply(call.request_id, error=f"{type(call.request).__name__} failed: {exc}")
        try:
            with self._send_lock:
                self._conn.send(reply)
        except (OSError, ValueError):  # the worker is gone; nobody is waiting any more
            pass

    def _handle(self, request: object) -> Any:
        endpoint = self._endpoint
        if isinstance(request, NodeIds):
            return endpoint.node_ids()
        if isinstance(request, Push):
            return endpoint.push(request.items, request.round, request.announcement)
        if isinstance(request, Wait):
            return endpoint.wait(request.message_ids, request.timeout, request.first)
        raise FedgeError(
            f"unknown request {type(request).__name__!r}",
            "run the worker and the server from one fedge version",
        )
