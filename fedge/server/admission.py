"""Which Fleet streams the server takes on: a cap, one per device identity, a deadline for Hello.

Why: streams that never sent Hello used to wait for it forever, so 600 of them from one
certificate took every thread of the (then synchronous) server: the admin's ``ListNodes`` timed
out and honest devices got no Welcome. Now

- at most ``max_streams`` Fleet streams exist at once (each is a coroutine on the server's event
  loop, so the cap bounds memory, not threads); one more is refused at once with
  ``RESOURCE_EXHAUSTED``;
- a device identity (its verified certificate name, known before any frame is read) has at most
  one stream: a new one replaces the old (audited ``replaced``), as a reconnecting device needs;
- a stream without Hello after ``hello_timeout`` seconds is cancelled (audited ``hello-timeout``)
  by one watcher thread, not one timer per stream.

A stream is seen through :class:`Stream` (its peer, and a thread-safe ``cancel``), so the
watcher thread never touches a ``grpc.aio`` context, which belongs to the event loop.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from typing import Protocol

#: Threads for the synchronous handlers (Control, health checks) beside the Fleet event loop.
CONTROL_THREADS = 32


class Stream(Protocol):
    """What admission needs of a Fleet stream."""

    def peer(self) -> str: ...

    def cancel(self) -> None:
        """End the stream (from any thread)."""


class StreamAdmission:
    """Admits, replaces and times out Fleet streams; thread-safe."""

    def __init__(
        self,
        max_streams: int,
        hello_timeout: float,
        audit: Callable[..., None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_streams = max_streams
        self._hello_timeout = hello_timeout
        self._audit = audit
        self._clock = clock
        self._lock = threading.Condition()
        self._count = 0
        self._owner: dict[str, Stream] = {}  # identity → its current stream
        # Streams still waiting for Hello: id(context) → (context, identity, seq of its deadline).
        self._awaiting: dict[int, tuple[Stream, str, int]] = {}
        self._deadlines: list[tuple[float, int, int]] = []  # (deadline, seq, id(context))
        self._seq = itertools.count()
        self._stopped = False
        self._watcher = threading.Thread(target=self._watch, daemon=True, name="fedge-hello-deadline")
        self._watcher.start()

    def admit(self, context: Stream, identity: str) -> bool:
        """Take a new stream on (False: the server is full); replaces ``identity``'s older stream."""
        with self._lock:
            if self._count >= self._max_streams:
                over = True
            else:
                over = False
                self._count += 1
                old = self._owner.get(identity) if identity else None
                if identity:
                    self._owner[identity] = context
                seq = next(self._seq)
                self._awaiting[id(context)] = (context, identity, seq)
                heapq.heappush(self._deadlines, (self._clock() + self._hello_timeout, seq, id(context)))
                self._lock.notify()
        if over:
            self._audit("refused", node=identity, peer=context.peer(), reason="too many streams")
            return False
        if old is not None:
            self._audit("replaced", node=identity, peer=old.peer(), by=context.peer())
            old.cancel()
        return True

    def hello(self, context: Stream) -> None:
        """The stream sent its Hello in time: no deadline any more."""
        with self._lock:
            self._awaiting.pop(id(context), None)

    def release(self, context: Stream, identity: str) -> None:
        """The stream ended (whatever way): free its place."""
        with self._lock:
            self._count -= 1
            self._awaiting.pop(id(context), None)
            if identity and self._owner.get(identity) is context:
                del self._owner[identity]

    def stop(self) -> None:
        """End the watcher thread."""
        with self._lock:
            self._stopped = True
            self._lock.notify()

    def _watch(self) -> None:
        while True:
            expired: list[tuple[Stream, str]] = []
            with self._lock:
                if self._stopped:
                    return
                now = self._clock()
                while self._deadlines and self._deadlines[0][0] <= now:
                    _, seq, key = heapq.heappop(self._deadlines)
                    waiting = self._awaiting.get(key)
                    if waiting is not None and waiting[2] == seq:  # not a reused id's old deadline
                        del self._awaiting[key]
                        expired.append((waiting[0], waiting[1]))
                if not expired:
                    wait = self._deadlines[0][0] - now if self._deadlines else None
                    self._lock.wait(wait)
                    continue
            for context, identity in expired:
                self._audit("hello-timeout", node=identity, peer=context.peer(), after=self._hello_timeout)
                context.cancel()
