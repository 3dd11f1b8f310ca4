"""Chunking of serialized messages on the Fleet stream, shared by server and edge.

A serialized Flower Message with model weights exceeds gRPC's default 4 MiB message limit, so it
travels as ordered chunks of at most :data:`CHUNK_BYTES`. Reassembly is where a hostile or broken
peer could make the receiver allocate without bound, so :class:`Assembler` enforces
:class:`FrameLimits` and reports violations as :class:`ChunkError` (the server closes that
stream; it never crashes).

Large messages live in files, not in memory, between the processes that pass them on (issue 16:
a 200 MB model cost the server process 7x and each daemon 7x the model when every hop held its
own copy). An :class:`Assembler` given a ``spool`` directory appends each chunk to a file and
returns a :class:`FileSpan`; :func:`split` reads a :class:`FileSpan` (or an :class:`OpenSpan`)
piece by piece as gRPC sends. So the server process holds one chunk per stream, whatever the
model's size, and a message crosses the pipe to the run worker as a file name.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO

from fedge.errors import FedgeError

MiB = 1024 * 1024
CHUNK_BYTES = 4 * MiB - 64 * 1024  # payload per frame; the margin leaves room for the envelope


@dataclass(frozen=True)
class FrameLimits:
    """Bounds on what one peer may send.

    Parameters
    ----------
    max_frame_bytes : int
        Largest frame gRPC accepts (enforced by the channel/server options).
    max_message_bytes : int
        Largest reassembled message.
    max_inflight_bytes : int
        Bytes of partially received messages held for one peer at once.
    max_inflight_messages : int
        Partially received messages held for one peer at once.
    max_chunks : int
        Most chunks one message may declare; 0 derives it from ``max_message_bytes`` at
        :data:`CHUNK_BYTES` per chunk.
    """

    max_frame_bytes: int = 16 * MiB
    max_message_bytes: int = 1024 * MiB
    max_inflight_bytes: int = 1024 * MiB
    max_inflight_messages: int = 64
    max_chunks: int = 0

    def chunk_cap(self) -> int:
        """Most chunks a message may declare."""
        return self.max_chunks or -(-self.max_message_bytes // CHUNK_BYTES)


class ChunkError(FedgeError):
    """A peer broke the chunking protocol or a limit; ``reason`` is short and machine-readable."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message, "the peer must send ordered chunks within the frame limits")
        self.reason = reason


@dataclass(frozen=True)
class FileSpan:
    """``length`` bytes at ``offset`` of the file at ``path``: a message (or part) kept on disk.

    Picklable, so it crosses the pipe between the server process and a run worker instead of
    the bytes. Whoever consumes it deletes the file (:meth:`discard`).
    """

    path: str
    offset: int
    length: int

    def discard(self) -> None:
        """Delete the file (already gone is fine)."""
        Path(self.path).unlink(missing_ok=True)


@dataclass(frozen=True)
class OpenSpan:
    """``length`` bytes at ``offset`` of an open file, read with ``pread`` (any thread, any order).

    What :func:`open_spans` makes of :class:`FileSpan` s: the file is opened once and deleted at
    once, and closes when the last reader lets go of it.
    """

    file: BinaryIO
    offset: int
    length: int


Piece = bytes | bytearray | memoryview | FileSpan | OpenSpan
"""One piece of a message to send: in memory, or in a file."""


def fresh_spool(path: Path) -> Path:
    """``path`` as an empty private spool directory: files a dead process left there are deleted."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    for leftover in path.glob("*.msg"):
        leftover.unlink(missing_ok=True)
    return path


def open_spans(pieces: Sequence[Piece]) -> list[Piece]:
    """``pieces`` with each :class:`FileSpan` opened (once per file) and its file unlinked."""
    files: dict[str, BinaryIO] = {}
    out: list[Piece] = []
    for piece in pieces:
        if isinstance(piece, FileSpan):
            if piece.path not in files:
                files[piece.path] = open(piece.path, "rb")  # noqa: SIM115 (closed with its last span)
                os.unlink(piece.path)
            piece = OpenSpan(files[piece.path], piece.offset, piece.length)
        out.append(piece)
    return out


def _views(piece: Piece, limit: int) -> Iterator[memoryview]:
    """``piece`` as views of at most ``limit`` bytes; file spans are read as they are asked for."""
    if isinstance(piece, FileSpan):
        with open(piece.path, "rb") as file:
            yield from _views(OpenSpan(file, piece.offset, piece.length), limit)
        return
    if isinstance(piece, OpenSpan):
        done = 0
        while done < piece.length:
            data = os.pread(piece.file.fileno(), min(limit, piece.length - done), piece.offset + done)
            if not data:
                raise OSError(f"{piece.file.name}: ends {piece.length - done} bytes early")
            done += len(data)
            yield memoryview(data)
        return
    view = memoryview(piece).cast("B")
    for start in range(0, len(view), limit):
        yield view[start : start + limit]


def _length(piece: Piece) -> int:
    if isinstance(piece, (FileSpan, OpenSpan)):
        return piece.length
    return memoryview(piece).nbytes


def split(data: Piece | Sequence[Piece], limit: int = CHUNK_BYTES) -> Iterator[tuple[int, int, bytes]]:
    """Yield ``(index, total, piece)``; an empty payload is one empty chunk (total ≥ 1).

    ``data`` may also be the frames of :func:`fedge.codec.encode_frames`: pieces are cut across
    frame boundaries, so a message is never joined into one large ``bytes`` first (a fresh
    multi-MB buffer costs ~2 GB/s of page faults on our VMs; 4 MiB pieces come from the heap).
    File spans among them are read one piece at a time, as the chunks are asked for.
    """
    frames: Sequence[Piece] = (
        [data] if isinstance(data, (bytes, bytearray, memoryview, FileSpan, OpenSpan)) else data
    )
    total = max(1, -(-sum(_length(f) for f in frames) // limit))
    index, parts, size = 0, list[memoryview](), 0
    for frame in frames:
        for view in _views(frame, limit):
            while view:
                take = view[: limit - size]
                parts.append(take)
                size += len(take)
                view = view[len(take) :]
                if size == limit:
                    yield index, total, b"".join(parts)
                    index, parts, size = index + 1, [], 0
    if parts or index == 0:
        yield index, total, b"".join(parts)


class InflightBudget:
    """Bytes of partial messages held across *all* peers, against one cap (thread-safe).

    Why: the per-peer limit bounds one stream, not a server with many; without a global cap a few
    devices each holding their allowance exhaust the server's memory together.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        """Bytes held now."""
        return self._used

    def take(self, size: int) -> bool:
        """Reserve ``size`` bytes; False (nothing reserved) if that would pass the cap."""
        with self._lock:
            if self._used + size > self.max_bytes:
                return False
            self._used += size
            return True

    def give(self, size: int) -> None:
        """Return ``size`` reserved bytes."""
        with self._lock:
            self._used -= size


@dataclass
class _Partial:
    total: int
    parts: list[bytes] = field(default_factory=list)
    size: int = 0
    count: int = 0
    file: IO[bytes] | None = None  # spooled: the chunks go here instead of ``parts``


#: Messages up to this size stay in memory even with a spool: one chunk of a small model costs
#: less held than a file costs in syscalls (10,000 devices' small replies would be 10,000 files).
SPOOL_AFTER = CHUNK_BYTES


class Assembler:
    """Reassembles one peer's chunks into whole messages, within :class:`FrameLimits`.

    With ``spool`` (a directory), a message larger than ``spool_after`` bytes is written to its
    own file there as its chunks arrive and comes back as a :class:`FileSpan`, which the consumer
    deletes; the limits still count its bytes (they then bound disk, and what the consumer will
    read). Smaller messages come back as ``bytes``. :meth:`touches_file` tells a caller on an
    event loop which chunks do file I/O, so that only those go to a thread.
    """

    def __init__(
        self,
        limits: FrameLimits | None = None,
        budget: InflightBudget | None = None,
        spool: Path | None = None,
        spool_after: int = SPOOL_AFTER,
    ) -> None:
        self.limits = limits or FrameLimits()
        self._budget = budget  # shared with the other peers' assemblers (the server's)
        self._spool = spool
        self._spool_after = spool_after
        self._partials: dict[str, _Partial] = {}
        self._inflight = 0

    def touches_file(self, message_id: str, index: int, size: int) -> bool:
        """Whether ``add`` of this chunk would create, write or delete a spool file."""
        if self._spool is None:
            return False
        partial = self._partials.get(message_id)
        if partial is not None and partial.file is not None:
            return True  # appended to, or dropped (a restart at index 0, an error)
        held = 0 if index == 0 or partial is None else partial.size
        return held + size > self._spool_after

    @property
    def spooling(self) -> bool:
        """Whether a partial message is in a file now (so :meth:`clear` deletes files)."""
        return any(p.file is not None for p in self._partials.values())

    @property
    def pending(self) -> int:
        """Messages with some but not all chunks received."""
        return len(self._partials)

    def add(self, message_id: str, index: int, total: int, data: bytes) -> bytes | FileSpan | None:
        """Feed one chunk; returns the whole payload after its last chunk, else ``None``."""
        lim = self.limits
        partial = self._partials.get(message_id)
        if index == 0:
            if partial is not None:
                self._drop(message_id)
            if not 1 <= total <= lim.chunk_cap():
                raise ChunkError("chunk-count", f"message {message_id[:64]!r} declares {total} chunks")
            if len(self._partials) >= lim.max_inflight_messages:
                raise ChunkError(
                    "inflight-messages", f"more than {lim.max_inflight_messages} partial messages"
                )
            partial = self._partials[message_id] = _Partial(total=total)
        elif partial is None or index != partial.count or total != partial.total:
            self._drop(message_id)
            raise ChunkError("out-of-order", f"chunk {index}/{total} of {message_id[:64]!r} out of order")
        if self._budget is not None and not self._budget.take(len(data)):
            self._drop(message_id)
            raise ChunkError(
                "global-inflight", f"the server holds {self._budget.max_bytes} bytes of partial messages"
            )
        if partial.file is None and self._spool is not None and partial.size + len(data) > self._spool_after:
            partial.file = tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed in _drop/add)
                dir=self._spool, prefix="in-", suffix=".msg", delete=False
            )
            for part in partial.parts:  # what came before it grew large
                partial.file.write(part)
            partial.parts = []
        if partial.file is not None:
            partial.file.write(data)
        else:
            partial.parts.append(data)
        partial.count += 1
        partial.size += len(data)
        self._inflight += len(data)
        if partial.size > lim.max_message_bytes:
            self._drop(message_id)
            raise ChunkError(
                "message-size", f"message {message_id[:64]!r} exceeds {lim.max_message_bytes} bytes"
            )
        if self._inflight > lim.max_inflight_bytes:
            self._drop(message_id)
            raise ChunkError("inflight-bytes", f"more than {lim.max_inflight_bytes} bytes in flight")
        if partial.count < partial.total:
            return None
        if partial.file is not None:
            partial.file.close()
            span = FileSpan(partial.file.name, 0, partial.size)
            partial.file = None  # kept: the consumer deletes it
            self._drop(message_id)
            return span
        self._drop(message_id)
        return b"".join(partial.parts)

    def clear(self) -> int:
        """Drop every partial message (the peer is gone): freed now, not by a GC; returns the bytes."""
        held = self._inflight
        for message_id in list(self._partials):
            self._drop(message_id)
        return held

    def _drop(self, message_id: str) -> None:
        partial = self._partials.pop(message_id, None)
        if partial is not None:
            if partial.file is not None:
                partial.file.close()
                os.unlink(partial.file.name)
            self._inflight -= partial.size
            if self._budget is not None:
                self._budget.give(partial.size)
