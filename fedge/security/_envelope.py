"""Byte layout of a sealed payload: framing, tensor manifest, chunk geometry (no cryptography).

Kept apart from ``seal.py`` so the parsing that runs on untrusted bytes is small and auditable:
every length a peer declares is checked against the bytes actually received *before* anything is
allocated, so a forged header claiming a 1 TB tensor costs nothing.

The outer ``SealedPayload`` is written and read by hand instead of through protobuf because the
protobuf runtime copies ``bytes`` fields twice (into its arena, then into a Python ``bytes``);
here the ciphertext is encrypted straight into the output buffer and decrypted straight out of
the input. The bytes are exactly what ``SealedPayload(...).SerializeToString()`` produces (fields
1, 2, 3 in order), so any protobuf implementation can still read them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from fedge.errors import FedgeError
from fedge.protos.v1 import envelope_pb2

#: Plain numeric dtypes, both byte orders: anything else (object, strings, structured, datetime,
#: platform-dependent float128) is refused, so a peer can never make us unpickle or misread data.
ALLOWED_DTYPES: dict[str, np.dtype] = {
    np.dtype(order + code).str: np.dtype(order + code)
    for order in "<>"
    for code in ("?", "i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f2", "f4", "f8", "c8", "c16")
}


def wire_dtype(dtype: np.dtype) -> str:
    """``dtype.str`` if a sealed payload may carry this dtype, else raise ``TypeError``."""
    code = dtype.str
    if code not in ALLOWED_DTYPES:
        names = ", ".join(sorted({str(d) for d in ALLOWED_DTYPES.values()}))
        raise TypeError(f"dtype {dtype} is not a plain numeric dtype; fedge only carries {names}")
    return code


CHUNK = 1 << 20  #: plaintext bytes per AES-GCM chunk
TAG = 16  #: AES-GCM tag length
ALIGN = 64  #: every tensor starts at a multiple of this in the plaintext (aligned numpy views)
SIG_LEN = 64  #: Ed25519 signature length
MAX_HEADER_BYTES = 1 << 20  #: far above any real manifest (~40 B per tensor)
MAX_TENSORS = 16384  #: bounds the parsed manifest's memory whatever the header size
MAX_NDIM = 32  #: numpy's own limit is 64; real tensors stay far below

_HEADER_KEY, _CIPHERTEXT_KEY, _SIGNATURE_KEY = 0x0A, 0x12, 0x1A  # field << 3 | wire type 2


class SealError(FedgeError):
    """A sealed payload or announcement was refused; ``reason`` is a short code for the audit log.

    Reasons: ``malformed``, ``unsupported``, ``bad-signature``, ``wrong-run``, ``wrong-key``,
    ``wrong-node``, ``wrong-stage``, ``replay``, ``wrong-round``, ``tampered``, ``expired``.
    """

    def __init__(self, reason: str, message: str, hint: str = "") -> None:
        super().__init__(f"sealed update refused ({reason}): {message}", hint)
        self.reason = reason


def malformed(message: str) -> SealError:
    return SealError("malformed", message, "the payload was not produced by fedge's seal()")


@dataclass(frozen=True, slots=True)
class Spec:
    """One validated manifest entry."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int
    nbytes: int


def aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def n_chunks(total: int) -> int:
    """Chunks for ``total`` plaintext bytes; an empty plaintext still has one (tag-only) chunk."""
    return max(1, -(-total // CHUNK))


def ciphertext_len(total: int) -> int:
    return total + TAG * n_chunks(total)


def chunk_bounds(i: int, total: int) -> tuple[int, int, int, int]:
    """(plaintext start, end, ciphertext start, end) of chunk ``i``, relative to their streams."""
    start, end = i * CHUNK, min(total, (i + 1) * CHUNK)
    return start, end, start + TAG * i, end + TAG * (i + 1)


# -- manifest ------------------------------------------------------------------------------------


def build_manifest(
    arrays: Sequence[tuple[str, np.ndarray, str]],
) -> tuple[list[envelope_pb2.TensorSpec], list[tuple[int, memoryview]], int]:
    """Lay out C-contiguous arrays: (manifest, [(offset, raw bytes)], plaintext length)."""
    specs, segments, end = [], [], 0
    for name, arr, dtype in arrays:
        offset = aligned(end)
        specs.append(
            envelope_pb2.TensorSpec(name=name, dtype=dtype, shape=arr.shape, offset=offset, nbytes=arr.nbytes)
        )
        if arr.nbytes:
            segments.append((offset, arr.reshape(-1).view(np.uint8).data))
        end = offset + arr.nbytes
    return specs, segments, end


def read_manifest(header: envelope_pb2.SealHeader, max_total: int) -> tuple[list[Spec], int]:
    """Validate the manifest against the canonical layout; returns specs and plaintext length.

    ``max_total`` (derived from the received ciphertext length) caps every declared size, so
    nothing declared can exceed what was actually received.
    """
    if len(header.manifest) > MAX_TENSORS:
        raise malformed(f"{len(header.manifest)} tensors exceed the limit of {MAX_TENSORS}")
    specs: list[Spec] = []
    names: set[str] = set()
    end = 0
    for i, t in enumerate(header.manifest):
        dtype = ALLOWED_DTYPES.get(t.dtype)
        if dtype is None:
            raise malformed(f"tensor #{i}: dtype {t.dtype[:20]!r} is not allowed")
        if t.name in names:
            raise malformed(f"tensor #{i}: duplicate name {t.name[:80]!r}")
        if len(t.shape) > MAX_NDIM:
            raise malformed(f"tensor #{i}: {len(t.shape)} dimensions")
        shape = tuple(t.shape)
        if t.offset != aligned(end) or t.nbytes != math.prod(shape) * dtype.itemsize:
            raise malformed(f"tensor #{i}: offset/size do not match its shape and dtype")
        end = t.offset + t.nbytes
        if end > max_total:
            raise malformed(f"tensor #{i}: extends beyond the ciphertext")
        names.add(t.name)
        specs.append(Spec(t.name, dtype, shape, t.offset, t.nbytes))
    return specs, end


def plaintext_chunks(segments: Sequence[tuple[int, memoryview]], total: int) -> Iterator[memoryview]:
    """Yield the plaintext stream chunk by chunk without concatenating the tensors.

    A chunk inside one tensor is a view of that tensor; a chunk spanning tensors (or alignment
    padding) is gathered into one reused ``CHUNK``-byte scratch buffer, padding zeroed.
    """
    scratch: np.ndarray | None = None
    j = 0
    for i in range(n_chunks(total)):
        start, end, _, _ = chunk_bounds(i, total)
        while j < len(segments) and segments[j][0] + len(segments[j][1]) <= start:
            j += 1
        if j < len(segments):
            off, seg = segments[j]
            if off <= start and end <= off + len(seg):
                yield seg[start - off : end - off]
                continue
        if scratch is None:
            scratch = np.empty(CHUNK, np.uint8)
        buf = scratch[: end - start]
        buf.fill(0)
        out = buf.data
        k = j
        while k < len(segments) and segments[k][0] < end:
            off, seg = segments[k]
            lo, hi = max(start, off), min(end, off + len(seg))
            out[lo - start : hi - start] = seg[lo - off : hi - off]
            k += 1
        yield out


# -- outer framing -------------------------------------------------------------------------------


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_varint(data: memoryview, pos: int) -> tuple[int, int]:
    value = 0
    for shift in range(0, 64, 7):
        if pos >= len(data):
            raise malformed("truncated length")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
    raise malformed("length varint too long")


def frame(header: bytes, ct_len: int) -> tuple[bytes, int]:
    """Bytes before the ciphertext (header field + ciphertext field key/length) and total size."""
    prefix = b"".join(
        [bytes([_HEADER_KEY]), varint(len(header)), header, bytes([_CIPHERTEXT_KEY]), varint(ct_len)]
    )
    return prefix, len(prefix) + ct_len + 2 + SIG_LEN


def signature_field(signature: bytes) -> bytes:
    return bytes([_SIGNATURE_KEY, len(signature)]) + signature


def split(data: memoryview) -> tuple[memoryview, memoryview, memoryview]:
    """(header, ciphertext, signature) views of a SealedPayload; strict, no copies."""
    fields: dict[int, memoryview] = {}
    pos = 0
    for key, limit in ((_HEADER_KEY, MAX_HEADER_BYTES), (_CIPHERTEXT_KEY, len(data)), (_SIGNATURE_KEY, 64)):
        if pos >= len(data) or data[pos] != key:
            raise malformed(f"expected field {key >> 3} at byte {pos}")
        length, pos = _read_varint(data, pos + 1)
        if length > limit or pos + length > len(data):
            raise malformed(f"field {key >> 3} declares {length} bytes; at most {limit} fit")
        fields[key] = data[pos : pos + length]
        pos += length
    if pos != len(data):
        raise malformed(f"{len(data) - pos} trailing bytes")
    if len(fields[_SIGNATURE_KEY]) != SIG_LEN:
        raise malformed("signature is not 64 bytes")
    return fields[_HEADER_KEY], fields[_CIPHERTEXT_KEY], fields[_SIGNATURE_KEY]


def split_head(head: memoryview, length: int) -> tuple[memoryview, int, int]:
    """From the first bytes of a SealedPayload of ``length`` bytes: (header, ciphertext offset, length).

    What :func:`split` checks, for a payload read from a file piece by piece: ``head`` holds at
    least the header field and the ciphertext field's key and length.
    """
    pos = 0
    fields: list[tuple[int, int]] = []
    for key, limit in ((_HEADER_KEY, MAX_HEADER_BYTES), (_CIPHERTEXT_KEY, length)):
        if pos >= len(head) or head[pos] != key:
            raise malformed(f"expected field {key >> 3} at byte {pos}")
        size, pos = _read_varint(head, pos + 1)
        if size > limit or pos + size > length:
            raise malformed(f"field {key >> 3} declares {size} bytes; at most {limit} fit")
        fields.append((pos, size))
        pos += size
    (h_at, h_len), (c_at, c_len) = fields
    if h_at + h_len > len(head):
        raise malformed("header field is cut short")
    if c_at + c_len + 2 + SIG_LEN != length:
        raise malformed(
            f"{length - (c_at + c_len + 2 + SIG_LEN)} bytes after the ciphertext are not a signature"
        )
    return head[h_at : h_at + h_len], c_at, c_len


def split_signature(tail: memoryview) -> memoryview:
    """The signature field that ends a SealedPayload (its last ``2 + SIG_LEN`` bytes)."""
    if len(tail) != 2 + SIG_LEN or tail[0] != _SIGNATURE_KEY or tail[1] != SIG_LEN:
        raise malformed("signature is not 64 bytes")
    return tail[2:]
