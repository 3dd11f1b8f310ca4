"""The edge side of the Fleet wire: the gRPC channel, chunking, reassembly, reconnect backoff.

Why chunks: a serialized Flower Message with model weights easily exceeds gRPC's 4 MiB default
message limit; every frame carries at most :data:`MAX_CHUNK_BYTES` of payload so frames stay
under 4 MiB whatever the peer's limit, and the 64 KiB margin leaves room for the frame envelope.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from fedge.chunks import CHUNK_BYTES, Assembler, ChunkError, FileSpan, FrameLimits, split
from fedge.codec import Frame
from fedge.config import EdgeConfig, require_insecure_allowed
from fedge.protos.v1 import fleet_pb2

from .tls import channel_credentials, tls_options

log = logging.getLogger("fedge.client.wire")

MAX_CHUNK_BYTES = CHUNK_BYTES
# Frames carry ≤4 MiB of payload; the limits leave ample headroom for a peer chunking a bit larger.
MAX_FRAME_BYTES = FrameLimits().max_frame_bytes

CHANNEL_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.max_send_message_length", MAX_FRAME_BYTES),
    ("grpc.max_receive_message_length", MAX_FRAME_BYTES),
    # The daemon owns reconnection (fresh channel per attempt, its own jittered backoff); keep
    # gRPC's internal reconnect backoff short so it never adds a long hidden delay. But
    # min_reconnect_backoff is also gRPC core's minimum *connect timeout* (TCP + TLS + HTTP/2
    # SETTINGS): at 250 ms a device on a 100 ms link, or one lost handshake packet, could never
    # connect (`fedge simulate --netem "delay=100ms"`). Keep gRPC's default of 20 s for it.
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 20_000),
    ("grpc.max_reconnect_backoff_ms", 5000),
    ("grpc.enable_retries", 0),
]


def make_channel(cfg: EdgeConfig) -> grpc.Channel:
    """The one place a channel to the server is built: mTLS with the enrolled certificate.

    Plaintext is allowed only with ``insecure`` and a loopback address (else ``FedgeError``).
    """
    if cfg.insecure:
        require_insecure_allowed(cfg.server, cfg.insecure)
        return grpc.insecure_channel(cfg.server, options=CHANNEL_OPTIONS)
    options = [*CHANNEL_OPTIONS, *tls_options(cfg.server_name)]
    return grpc.secure_channel(cfg.server, channel_credentials(cfg.state_dir), options=options)


def reply_frames(
    message_id: str, payload: bytes | Sequence[Frame], limit: int = MAX_CHUNK_BYTES
) -> Iterator[fleet_pb2.EdgeFrame]:
    """Split a serialized reply (bytes, or codec frames) into ``EdgeFrame(reply=Chunk)`` frames, in order.

    Lazily: the stream's request iterator pulls them as gRPC sends, so the daemon holds the
    reply once and one chunk, never a chunked copy of it (issue 16). An empty payload still
    yields one chunk (``total`` is always ≥ 1). Each chunk is filled in place inside its frame:
    passing a built ``Chunk`` to ``EdgeFrame(reply=...)`` copies it, data and all (protobuf
    merges a sub-message given to a constructor), which cost more than the frame's
    serialization.
    """
    for i, total, piece in split(payload, limit):
        frame = fleet_pb2.EdgeFrame()
        chunk = frame.reply
        chunk.message_id, chunk.index, chunk.total, chunk.data = message_id, i, total, piece
        yield frame


@dataclass
class Instruction:
    """A fully reassembled instruction: its transport id, payload and run context (if sent)."""

    message_id: str
    data: bytes | FileSpan  # in a file when the reassembler spools (the daemon's state dir)
    run_id: int
    run_config_json: str | None
    # Signed aggregator announcement to seal the reply to (empty: no sealing) and the server round.
    announcement: bytes = b""
    round: int = 0


class Reassembler:
    """Collects instruction chunks (one stream's worth) into whole :class:`Instruction` s.

    Chunks of one message arrive in order; anything else (gap, duplicate, changed ``total``, a
    limit exceeded) is a protocol error: the partial message is dropped with a warning, never
    executed.
    """

    def __init__(self, limits: FrameLimits | None = None, spool: Path | None = None) -> None:
        self._assembler = Assembler(limits, spool=spool)
        self._runs: dict[str, fleet_pb2.RunContext | None] = {}

    def add(self, chunk: fleet_pb2.Chunk) -> Instruction | None:
        """Feed one chunk; returns the instruction once its last chunk arrived."""
        mid = chunk.message_id
        if chunk.index == 0:
            self._runs[mid] = chunk.run if chunk.HasField("run") else None
        try:
            data = self._assembler.add(mid, chunk.index, chunk.total, chunk.data)
        except ChunkError as exc:
            log.warning("instruction dropped: %s", exc.message)
            self._runs.pop(mid, None)
            return None
        if data is None:
            return None
        run = self._runs.pop(mid, None)
        if run is None:
            return Instruction(mid, data, 0, None)
        return Instruction(mid, data, run.run_id, run.run_config_json, run.announcement, run.round)

    @property
    def pending(self) -> int:
        """Messages with some but not all chunks received."""
        return self._assembler.pending


class Backoff:
    """Exponential backoff with full jitter: delay ~ U(0, min(maximum, initial·2ⁿ))."""

    def __init__(self, initial: float, maximum: float, rng: random.Random | None = None) -> None:
        self.initial, self.maximum = initial, maximum
        self._attempt = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        """The next delay; each call doubles the ceiling up to ``maximum``."""
        ceiling = min(self.maximum, self.initial * (2 ** min(self._attempt, 30)))
        self._attempt += 1
        return self._rng.uniform(0.0, ceiling)

    def reset(self) -> None:
        """Back to the first delay (after a successful Welcome)."""
        self._attempt = 0
