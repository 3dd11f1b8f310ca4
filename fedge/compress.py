"""Compressed updates (``--compress int8|int4|topk:F``): the encoding both sides share.

Edge uplinks are thin, and a train reply is a whole model. With ``compress`` set, the device
sends its *update* ``delta = trained - received`` in fewer bits (:mod:`fedge.client.compression`
adds error feedback: what one round's encoding loses is carried into the next round's update) and
the server decodes each reply as it arrives, before screening, back to ``received + decoded``
(:func:`decode_reply`), so strategies, screening and streaming aggregation see ordinary replies.

Schemes, per floating-point array of ``n`` elements (other arrays, e.g. BatchNorm's counter,
travel raw):

* ``int8``: a float32 scale ``max|v| / 127`` and ``n`` int8 values ``round(v / scale)``: ~4x;
* ``int4``: a float32 scale ``max|v| / 7`` and ``n`` values in ``[-7, 7]``, two per byte: ~8x;
* ``topk:F`` (``0 < F < 1``): the ``k = ceil(F n)`` entries largest in magnitude, as indices
  (uint16 when ``n <= 65536``, else uint32) and float16 values: at most 1/F x (20x for 0.05).

Wire form: the reply's one ArrayRecord holds a single uint8 array :data:`BLOB` — every array's
segment, little-endian, in the order of the instruction's ArrayRecord, whose names, shapes and
dtypes the server already knows (so nothing else is sent) — and a ConfigRecord :data:`RECORD`
names the scheme. Sealing seals that array like any other. A blob whose length differs from what
the scheme and the instruction make it is malformed: the reply is rejected, never half-read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, Message

from fedge.codec import array_from_numpy, as_views
from fedge.errors import FedgeError

#: Run-config key (``RunSettings.compress``).
KEY = "compress"
#: The reply's ConfigRecord naming its scheme, and the one array of its ArrayRecord.
RECORD, BLOB = "fedge-compress", "fedge-compressed"
SCHEMES = ("int8", "int4", "topk:F")


class CompressionError(FedgeError):
    """A compressed reply that does not decode against its instruction."""


@dataclass(frozen=True)
class Scheme:
    """One compression scheme: ``kind`` (int8, int4, topk) and, for top-k, the kept ``fraction``."""

    kind: str
    fraction: float = 0.0

    @classmethod
    def parse(cls, text: str) -> Scheme:
        """``int8``, ``int4`` or ``topk:F``; anything else is a ``FedgeError`` with a hint."""
        hint = "use --compress int8, int4 or topk:F with 0 < F < 1 (e.g. topk:0.05)"
        if text in ("int8", "int4"):
            return cls(text)
        kind, _, value = text.partition(":")
        if kind == "topk":
            try:
                fraction = float(value)
            except ValueError:
                raise FedgeError(f"invalid compress: {text!r}", hint) from None
            if 0 < fraction < 1:
                return cls("topk", fraction)
        raise FedgeError(f"invalid compress: {text!r}", hint)

    def __str__(self) -> str:
        return f"topk:{self.fraction:g}" if self.kind == "topk" else self.kind

    def size(self, n: int) -> int:
        """Bytes of one floating array's segment of ``n`` elements."""
        if self.kind == "int8":
            return 4 + n
        if self.kind == "int4":
            return 4 + (n + 1) // 2
        k = self.k(n)
        return k * (_index_dtype(n).itemsize + 2)

    def k(self, n: int) -> int:
        """Top-k: entries kept of ``n``."""
        return min(n, max(1, math.ceil(self.fraction * n)))


def _index_dtype(n: int) -> np.dtype:
    return np.dtype("<u2") if n <= 1 << 16 else np.dtype("<u4")


def _floating(dtype: np.dtype) -> bool:
    return dtype.kind == "f"


def _encode(scheme: Scheme, v: np.ndarray) -> tuple[bytes, np.ndarray]:
    """One flat float32 vector → (its segment, what the server will decode from it)."""
    n = v.size
    if scheme.kind == "topk":
        k = scheme.k(n)
        idx = np.argpartition(np.abs(v), n - k)[n - k :] if k < n else np.arange(n)
        idx = np.sort(idx)
        values = v[idx].astype("<f2")
        decoded = np.zeros(n, np.float32)
        decoded[idx] = values.astype(np.float32)
        return idx.astype(_index_dtype(n)).tobytes() + values.tobytes(), decoded
    levels = 127 if scheme.kind == "int8" else 7
    peak = float(np.max(np.abs(v))) if n else 0.0
    scale = np.float32(peak / levels if peak > 0 and math.isfinite(peak) else 0.0)
    q = np.clip(np.rint(v / scale), -levels, levels).astype(np.int8) if scale > 0 else np.zeros(n, np.int8)
    decoded = q.astype(np.float32) * scale
    if scheme.kind == "int8":
        return scale.astype("<f4").tobytes() + q.tobytes(), decoded
    nibbles = (q + 8).astype(np.uint8)  # 1..15
    if n % 2:
        nibbles = np.append(nibbles, np.uint8(8))  # a zero pads the last byte
    packed = nibbles[0::2] | (nibbles[1::2] << 4)
    return scale.astype("<f4").tobytes() + packed.tobytes(), decoded


def _decode(scheme: Scheme, segment: memoryview, n: int) -> np.ndarray:
    """A segment → the flat float32 vector it encodes."""
    if scheme.kind == "topk":
        k, index = scheme.k(n), _index_dtype(n)
        idx = np.frombuffer(segment, index, count=k).astype(np.int64)
        values = np.frombuffer(segment, "<f2", count=k, offset=k * index.itemsize)
        if k and (idx.max() >= n or np.any(np.diff(idx) <= 0)):
            raise CompressionError("top-k indices out of range or not increasing", "")
        out = np.zeros(n, np.float32)
        out[idx] = values.astype(np.float32)
        return out
    scale = np.frombuffer(segment, "<f4", count=1)[0]
    if scheme.kind == "int8":
        q = np.frombuffer(segment, np.int8, count=n, offset=4)
    else:
        packed = np.frombuffer(segment, np.uint8, offset=4)
        q = np.empty(packed.size * 2, np.int8)
        q[0::2] = (packed & 0x0F).astype(np.int8) - 8
        q[1::2] = (packed >> 4).astype(np.int8) - 8
        q = q[:n]
    return q.astype(np.float32) * np.float32(scale)


def encode_update(
    scheme: Scheme,
    received: Mapping[str, np.ndarray],
    trained: Mapping[str, np.ndarray],
    residual: Mapping[str, np.ndarray],
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The blob of ``trained - received + residual``, and the new residual (what it lost).

    ``received`` fixes order, names, shapes and dtypes; ``residual`` may lack arrays (zeros).
    """
    parts: list[bytes] = []
    kept: dict[str, np.ndarray] = {}
    for name, before in received.items():
        after = trained[name]
        if not _floating(before.dtype):
            parts.append(np.ascontiguousarray(after, before.dtype.newbyteorder("<")).tobytes())
            continue
        v = (after.astype(np.float32) - before.astype(np.float32)).ravel()
        carried = residual.get(name)
        if carried is not None and carried.size == v.size:
            v = v + carried.astype(np.float32).ravel()
        segment, decoded = _encode(scheme, v)
        parts.append(segment)
        kept[name] = (v - decoded).reshape(before.shape)
    return np.frombuffer(b"".join(parts), np.uint8), kept


def decode_update(
    scheme: Scheme, blob: np.ndarray, reference: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """``reference + decoded update`` per array, in the reference's dtypes; raises on any misfit."""
    expected = sum(scheme.size(x.size) if _floating(x.dtype) else x.nbytes for x in reference.values())
    if blob.dtype != np.uint8 or blob.ndim != 1 or blob.size != expected:
        raise CompressionError(
            f"compressed update of {blob.nbytes} bytes, {expected} expected for {scheme}",
            "the device must encode against the model it was sent",
        )
    data = np.ascontiguousarray(blob).data
    out: dict[str, np.ndarray] = {}
    offset = 0
    for name, ref in reference.items():
        size = scheme.size(ref.size) if _floating(ref.dtype) else ref.nbytes
        segment = data[offset : offset + size]
        offset += size
        if not _floating(ref.dtype):
            raw = np.frombuffer(segment, ref.dtype.newbyteorder("<"), count=ref.size)
            out[name] = raw.astype(ref.dtype).reshape(ref.shape)
            continue
        delta = _decode(scheme, segment, ref.size).reshape(ref.shape)
        out[name] = (ref.astype(np.float32) + delta).astype(ref.dtype)
    return out


def is_compressed(reply: Message) -> bool:
    """Whether ``reply`` carries a compressed update."""
    return reply.has_content() and RECORD in reply.content.config_records


def decode_reply(reply: Message, reference: ArrayRecord) -> Message:
    """``reply`` with its compressed update replaced by full arrays (``reference`` + update)."""
    content = reply.content
    scheme = Scheme.parse(str(content.config_records[RECORD].get("scheme", "")))
    records = list(content.array_records.items())
    if len(records) != 1 or list(records[0][1].keys()) != [BLOB]:
        raise CompressionError("a compressed reply must carry one ArrayRecord with one blob", "")
    name, record = records[0]
    arrays = decode_update(scheme, as_views(record)[BLOB], as_views(reference))
    del content[RECORD]
    del content[name]
    decoded = ArrayRecord()
    for key, value in arrays.items():
        decoded[key] = array_from_numpy(value)
    content[name] = decoded
    return reply
