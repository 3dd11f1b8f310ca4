"""A TCP impairment proxy: delay, jitter, loss and connection resets on a real byte stream.

Why a proxy: the kernels fedge is tested on have no ``netem`` qdisc, so delay and loss cannot
come from ``tc``. Everything time-based is injected here, in user space, on the path between a
daemon and the server. ``fedge simulate --netem`` still takes the bandwidth from the kernel
(``tbf`` on a veth pair, see :mod:`fedge.sim.netem`); a proxy that runs where no qdisc can be
set (the compose ``impair`` sidecar, :mod:`fedge.sim.impair_sidecar`) limits it itself. The proxy
works on TCP payload, so it models what TCP shows the application, not individual packets:

- **rate**: each direction is a link of ``rate`` bit/s: a chunk takes ``8·len/rate`` seconds
  on the wire, after the chunks before it (a FIFO link); delay counts from when it has passed.

- **delay/jitter**: every chunk read from one side is written to the other ``delay ± jitter``
  seconds later (uniform jitter). Chunks are never reordered: TCP delivers in order, so a chunk
  released early waits for the one before it (as netem's reordered packets wait in TCP).
- **loss**: each MSS-sized segment of a chunk is lost with probability ``loss``; TCP would
  retransmit it, so a chunk holding a lost segment arrives ``rto`` later (200 ms: Linux's
  minimum retransmission timeout), and everything behind it waits (head-of-line blocking).
- **reset**: each segment may instead abort the connection: both peers get a TCP RST.

Both directions are impaired independently. Runs in its own thread with its own event loop
(:class:`ProxyThread`), so the synchronous simulator and tests can use it.
"""

from __future__ import annotations

import asyncio
import math
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")
_CHUNK = 64 * 1024
_QUEUE_CHUNKS = 64  # ≤ 4 MiB in flight per direction: the proxy pushes back instead of buffering
_EOF = b""


@dataclass(frozen=True)
class Impairment:
    """What one direction of a link does to the bytes crossing it.

    Parameters
    ----------
    delay : float
        Seconds added to every chunk, in each direction.
    jitter : float
        Up to this many seconds more or less (uniform), never reordering.
    loss : float
        Probability that an MSS-sized segment is lost (costs ``rto`` for it and all behind it).
    reset : float
        Probability per segment that the connection is reset (RST to both peers).
    rate : float
        Bits per second each direction carries (0: unlimited).
    rto : float
        Retransmission timeout paid for a lost segment.
    mss : int
        Segment size the probabilities apply to.
    """

    delay: float = 0.0
    jitter: float = 0.0
    loss: float = 0.0
    reset: float = 0.0
    rate: float = 0.0
    rto: float = 0.2
    mss: int = 1448

    def __post_init__(self) -> None:
        if self.delay < 0 or self.jitter < 0 or self.rto < 0 or self.rate < 0 or self.mss < 1:
            raise ValueError("delay, jitter, rate and rto must be ≥ 0 and mss ≥ 1")
        if not (0 <= self.loss < 1 and 0 <= self.reset < 1):
            raise ValueError("loss and reset are probabilities in [0, 1)")


@dataclass
class LinkStats:
    """Counters of one listener (all its connections), for tests and benchmarks."""

    connections: int = 0
    bytes_up: int = 0  # client → target
    bytes_down: int = 0  # target → client
    losses: int = 0
    resets: int = 0
    errors: list[str] = field(default_factory=list)


class ImpairmentProxy:
    """Accept on ``listen``; forward each connection to ``target`` through an :class:`Impairment`."""

    def __init__(
        self,
        listen: tuple[str, int],
        target: tuple[str, int],
        impairment: Impairment,
        seed: int | None = None,
    ) -> None:
        self.listen, self.target, self.impairment = listen, target, impairment
        self.stats = LinkStats()
        self._rng = random.Random(seed)
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> tuple[str, int]:
        """Start listening; returns the bound ``(host, port)`` (port 0 picks a free one)."""
        self._server = await asyncio.start_server(self._accept, *self.listen)
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    async def close(self) -> None:
        """Stop listening and cut every open connection."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.stats.connections += 1
        writers: tuple[asyncio.StreamWriter, ...] = (client_w,)
        try:
            try:
                target_r, target_w = await asyncio.open_connection(*self.target)
            except OSError as exc:
                self.stats.errors.append(f"connect {self.target}: {exc}")
                _abort(client_w)
                return
            writers = (client_w, target_w)
            rng = random.Random(self._rng.getrandbits(64))
            up = self._direction(client_r, target_w, rng, (client_w, target_w), "up")
            down = self._direction(target_r, client_w, rng, (client_w, target_w), "down")
            await asyncio.gather(up, down)
        finally:
            for w in writers:
                if not w.is_closing():
                    w.close()
            self._tasks.discard(task)

    async def _direction(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        rng: random.Random,
        both: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
        name: str,
    ) -> None:
        """Read, stamp each chunk with its release time, deliver in order; EOF is passed on."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(_QUEUE_CHUNKS)
        sender = asyncio.create_task(self._send(queue, writer, both))
        imp, last, wire_free = self.impairment, 0.0, 0.0
        try:
            while True:
                try:
                    data = await reader.read(_CHUNK)
                except (ConnectionError, OSError):
                    data = _EOF
                if not data:
                    await queue.put((last, _EOF))
                    break
                segments = math.ceil(len(data) / imp.mss)
                if imp.reset and rng.random() < 1 - (1 - imp.reset) ** segments:
                    self.stats.resets += 1
                    for w in both:
                        _abort(w)
                    return
                now = time.monotonic()
                if imp.rate:  # serialised after the chunks before it, then delayed
                    wire_free = max(now, wire_free) + len(data) * 8 / imp.rate
                    now = wire_free
                release = now + imp.delay + (rng.uniform(-imp.jitter, imp.jitter))
                if imp.loss and rng.random() < 1 - (1 - imp.loss) ** segments:
                    self.stats.losses += 1
                    release += imp.rto
                last = max(release, last)
                if name == "up":
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)
                await queue.put((last, data))
            await sender
        finally:
            sender.cancel()

    async def _send(
        self,
        queue: asyncio.Queue[tuple[float, bytes]],
        writer: asyncio.StreamWriter,
        both: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        try:
            while True:
                release, data = await queue.get()
                wait = release - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if writer.can_write_eof() and not writer.is_closing():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            for w in both:  # one side is gone: the other sees the connection drop, as on a real link
                _abort(w)


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0), not FIN: what a peer sees when a middlebox resets a connection."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


class ProxyThread:
    """An event loop in a daemon thread hosting any number of proxies (use as a context manager)."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fedge-impair", daemon=True)
        self._thread.start()
        self.proxies: list[ImpairmentProxy] = []

    def __enter__(self) -> ProxyThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, factory: Callable[[], Coroutine[Any, Any, T]], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(factory(), self._loop).result(timeout)

    def add(
        self,
        listen: tuple[str, int],
        target: tuple[str, int],
        impairment: Impairment,
        seed: int | None = None,
    ) -> tuple[str, ImpairmentProxy]:
        """Start a proxy; returns its ``host:port`` and the proxy (for its :class:`LinkStats`)."""
        proxy = ImpairmentProxy(listen, target, impairment, seed)
        host, port = self._call(proxy.start)
        self.proxies.append(proxy)
        return f"{host}:{port}", proxy

    def close(self) -> None:
        """Close every proxy and stop the loop (idempotent)."""
        if not self._loop.is_running():
            return
        for proxy in self.proxies:
            self._call(proxy.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()
