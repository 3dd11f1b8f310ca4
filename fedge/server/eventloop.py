"""The server's one asyncio event loop, and the outbox a device stream's writer awaits.

Why one loop in its own thread: every Fleet stream is a coroutine on it (``grpc.aio``), so
10,000 held streams cost 10,000 small objects, not 10,000 threads. The rest of the server (run
workers, the router, the model hub, the revocation watcher) stays synchronous and talks to the
streams only through :class:`Outbox`, whose ``put`` is safe from any thread.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

from fedge.protos.v1 import fleet_pb2

T = TypeVar("T")

#: What a stream writer sends: a frame, frames read lazily (a model file), or ``None`` (end).
Item = fleet_pb2.ServerFrame | Iterable[fleet_pb2.ServerFrame] | None


class DiskFrames:
    """Frames read from a file as the stream writer asks for them (a large spooled instruction).

    A marker: the Fleet writer makes each frame on its I/O thread, since a read of a 4 MiB
    chunk must not stall the event loop that every device stream shares.
    """

    def __init__(self, frames: Iterable[fleet_pb2.ServerFrame]) -> None:
        self._frames = frames

    def __iter__(self) -> Iterator[fleet_pb2.ServerFrame]:
        return iter(self._frames)


class LoopThread:
    """An asyncio loop running in a daemon thread; coroutines are submitted from other threads."""

    def __init__(self, name: str = "fedge-aio") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True, name=name)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        """Schedule ``coro`` on the loop; the caller may wait on the returned future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, make: Callable[[], Awaitable[T]], timeout: float | None = None) -> T:
        """Run ``make()`` on the loop and wait for its result (re-raising its exception)."""

        async def run() -> T:
            return await make()

        return self.submit(run()).result(timeout)

    def close(self) -> None:
        """Stop the loop after what it is running now; the thread ends."""
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5.0)
        if not self._thread.is_alive():
            self.loop.close()


class Outbox(queue.Queue[Item]):
    """A session's outbox that wakes its stream writer on the event loop.

    A :class:`queue.Queue`, so the synchronous producers (``Router.push``, the model hub,
    ``Session.close``) are unchanged; each ``put`` also sets an :class:`asyncio.Event` through
    ``call_soon_threadsafe``, which the writer awaits instead of blocking a thread.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._loop = loop
        self._ready = asyncio.Event()

    def put(self, item: Item, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._ready.set)

    async def next(self, timeout: float) -> Item:
        """The next item (loop thread only); ``TimeoutError`` when none came within ``timeout`` s."""
        while True:
            try:
                return self.get_nowait()
            except queue.Empty:
                pass
            self._ready.clear()
            try:  # a put between the first look and clear() would otherwise wait for the next one
                return self.get_nowait()
            except queue.Empty:
                pass
            # asyncio.timeout, not wait_for: no task per wait (10,000 idle streams wait at once).
            async with asyncio.timeout(timeout):
                await self._ready.wait()
