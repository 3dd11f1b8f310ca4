"""The edge side of the Fleet wire: the gRPC channel, chunking, reassembly, reconnect backoff.

Why chunks: a serialized Flower Message with model weights easily exceeds gRPC's 4 MiB default
message limit; every frame carries at most :data:`MAX_CHUNK_BYTES` of payload so frames stay
under 4 MiB whatever the peer's limit, and the 64 KiB margin leaves room for the frame envelope.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field

import grpc

from fedge.config import EdgeConfig, require_insecure_allowed
from fedge.protos.v1 import fleet_pb2

log = logging.getLogger("fedge.client.wire")

MiB = 1024 * 1024
MAX_CHUNK_BYTES = 4 * MiB - 64 * 1024
# Frames carry ≤4 MiB of payload; the limits leave ample headroom for a peer chunking a bit larger.
MAX_FRAME_BYTES = 16 * MiB

CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_send_message_length", MAX_FRAME_BYTES),
    ("grpc.max_receive_message_length", MAX_FRAME_BYTES),
    # The daemon owns reconnection (fresh channel per attempt, its own jittered backoff); keep
    # gRPC's internal reconnect backoff short so it never adds a long hidden delay.
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 5000),
    ("grpc.enable_retries", 0),
]


def make_channel(cfg: EdgeConfig) -> grpc.Channel:
    """The one place a channel to the server is built (mTLS plugs in here next).

    Plaintext is allowed only with ``insecure`` and a loopback address (else ``FedgeError``).
    """
    require_insecure_allowed(cfg.server, cfg.insecure)
    return grpc.insecure_channel(cfg.server, options=CHANNEL_OPTIONS)


def reply_frames(message_id: str, payload: bytes, limit: int = MAX_CHUNK_BYTES) -> list[fleet_pb2.EdgeFrame]:
    """Split a serialized reply into ``EdgeFrame(reply=Chunk)`` frames, in order.

    An empty payload still yields one chunk (``total`` is always ≥ 1).
    """
    view = memoryview(payload)
    pieces = [view[i : i + limit] for i in range(0, len(payload), limit)] or [view[:0]]
    total = len(pieces)
    return [
        fleet_pb2.EdgeFrame(
            reply=fleet_pb2.Chunk(message_id=message_id, index=i, total=total, data=bytes(piece))
        )
        for i, piece in enumerate(pieces)
    ]


@dataclass
class Instruction:
    """A fully reassembled instruction: its transport id, payload and run context (if sent)."""

    message_id: str
    data: bytes
    run_id: int
    run_config_json: str | None


@dataclass
class _Partial:
    total: int
    parts: list[bytes] = field(default_factory=list)
    run_id: int = 0
    run_config_json: str | None = None


class Reassembler:
    """Collects instruction chunks (one stream's worth) into whole :class:`Instruction` s.

    Chunks of one message arrive in order; anything else (gap, duplicate, changed ``total``) is
    a protocol error: the partial message is dropped with a warning, never executed.
    """

    def __init__(self) -> None:
        self._partials: dict[str, _Partial] = {}

    def add(self, chunk: fleet_pb2.Chunk) -> Instruction | None:
        """Feed one chunk; returns the instruction once its last chunk arrived."""
        mid = chunk.message_id
        partial = self._partials.get(mid)
        if chunk.index == 0:
            if partial is not None:
                log.warning("instruction %s restarted at chunk 0; dropping the partial copy", mid)
            if chunk.total < 1:
                log.warning("instruction %s has total=0; dropped", mid)
                return None
            partial = _Partial(total=chunk.total)
            if chunk.HasField("run"):
                partial.run_id = chunk.run.run_id
                partial.run_config_json = chunk.run.run_config_json
            self._partials[mid] = partial
        elif partial is None or chunk.index != len(partial.parts) or chunk.total != partial.total:
            log.warning("out-of-order chunk %d/%d of instruction %s; dropped", chunk.index, chunk.total, mid)
            self._partials.pop(mid, None)
            return None
        partial.parts.append(chunk.data)
        if len(partial.parts) < partial.total:
            return None
        del self._partials[mid]
        return Instruction(mid, b"".join(partial.parts), partial.run_id, partial.run_config_json)

    @property
    def pending(self) -> int:
        """Messages with some but not all chunks received."""
        return len(self._partials)


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
