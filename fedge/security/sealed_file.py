"""A sealed update in a spool file: verified first, decrypted later, chunk by chunk.

:func:`open_sealed_file` is :func:`fedge.security.seal.open_record` for a payload the server
left on disk: every tensor is decrypted straight into the ``bytes`` of its ``Array``, so the run
worker holds the opened update once and never the sealed payload.

:func:`verify_sealed_file` stops before decryption: it runs every check of
:func:`~fedge.security.seal.open_sealed` up to the signature and the context, and returns a
:class:`SealedFile` whose :meth:`~SealedFile.arrays` decrypts one tensor at a time, as often as
asked. What that is for: a consumer that folds the update into a running sum needs the whole
update at no moment (the streaming exchange: :mod:`fedge.server.deferred`), so the run worker
holds one tensor of it instead of a model. Every pass verifies every chunk's tag, so a pass
that yields the last tensor has authenticated all of them; a consumer that must not act on a
partly read update (a fold) makes one full pass first.
"""

from __future__ import annotations

import hashlib
import os
import weakref
from collections.abc import Callable, Iterator
from typing import TypeVar

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from flwr.app import Array, ArrayRecord
from flwr.common.constant import SType

from fedge.buffers import fresh_bytes
from fedge.chunks import FileSpan
from fedge.codec import npy_prefix
from fedge.protos.v1 import envelope_pb2
from fedge.security import _envelope as env
from fedge.security._announce import AggregatorKey
from fedge.security._envelope import SealError
from fedge.security.seal import _chunk_aad, _chunk_nonce, _verified

__all__ = ["SealedFile", "open_sealed_file", "verify_sealed_file"]

T = TypeVar("T")

Layout = dict[str, tuple[np.dtype, tuple[int, ...]]]
"""Name → (dtype, shape) of an update's arrays, in the sealed order."""


class SealedFile:
    """A verified sealed payload in a file (signature and context checked), not yet decrypted.

    Holds the file open: the spool file may be unlinked at once, its space goes at :meth:`close`
    (or when this object is collected).
    """

    def __init__(
        self,
        fd: int,
        ct_offset: int,
        header: envelope_pb2.SealHeader,
        header_digest: bytes,
        specs: list[env.Spec],
        total: int,
        payload_key: bytes,
    ) -> None:
        self._fd, self._ct_offset = fd, ct_offset
        self._base = int.from_bytes(header.nonce, "big")
        self._digest, self._specs, self._total = header_digest, specs, total
        self._aead = AESGCM(payload_key)
        self._closed = weakref.finalize(self, os.close, fd)

    @property
    def layout(self) -> Layout:
        """Names, dtypes and shapes from the authenticated manifest (no decryption needed)."""
        return {s.name: (s.dtype, s.shape) for s in self._specs}

    def close(self) -> None:
        """Close the file (its space is freed if it was already unlinked)."""
        self._closed()

    def arrays(self) -> Iterator[tuple[str, np.ndarray]]:
        """Each tensor, decrypted into a fresh array, in the sealed order; one pass of the file.

        Raises :class:`SealError` (``tampered``) at the first chunk that fails authentication:
        arrays already yielded came from authenticated chunks, but the update as a whole is not
        genuine.
        """
        for spec, buffer in self._walk(lambda s: _fresh_ndarray(s.nbytes)):
            yield spec.name, buffer.view(spec.dtype).reshape(spec.shape)
            del buffer  # the consumer may drop the tensor before the next one is decrypted

    def record(self) -> ArrayRecord:
        """The whole update as an ArrayRecord, each tensor decrypted into its ``Array``'s bytes."""
        record = ArrayRecord()
        for spec, (data, body) in self._walk(_fresh_array):
            body.release()
            record[spec.name] = Array(dtype=str(spec.dtype), shape=spec.shape, stype=SType.NUMPY, data=data)
        return record

    def _read(self, start: int, end: int) -> bytes:
        data = os.pread(self._fd, end - start, self._ct_offset + start)
        if len(data) != end - start:
            raise env.malformed("the sealed payload ends early")
        return data

    def _walk(self, allocate: Callable[[env.Spec], T]) -> Iterator[tuple[env.Spec, T]]:
        """Decrypt chunk by chunk into ``allocate(spec)`` 's buffer; yield each when complete.

        ``allocate`` returns a holder whose writable bytes are :func:`_body` of it. A chunk that
        lies inside one tensor is decrypted straight into it; one across tensor boundaries (or
        alignment padding) goes through a one-chunk scratch buffer.
        """
        specs, total = self._specs, self._total
        count = env.n_chunks(total)
        scratch = memoryview(bytearray(env.CHUNK))
        held: dict[int, T] = {}
        done = 0  # specs[:done] were yielded
        try:
            for i in range(count):
                p0, p1, c0, c1 = env.chunk_bounds(i, total)
                nonce, aad = _chunk_nonce(self._base, i), _chunk_aad(self._digest, i, i == count - 1)
                k = done
                while k < len(specs) and specs[k].offset + specs[k].nbytes <= p0 and specs[k].nbytes:
                    k += 1
                spec = specs[k] if k < len(specs) else None
                if spec is not None and spec.offset <= p0 and p1 <= spec.offset + spec.nbytes:
                    if k not in held:
                        held[k] = allocate(spec)
                    at = spec.offset
                    self._aead.decrypt_into(nonce, self._read(c0, c1), aad, _body(held[k])[p0 - at : p1 - at])
                else:
                    out = scratch[: p1 - p0]
                    self._aead.decrypt_into(nonce, self._read(c0, c1), aad, out)
                    for j in range(k, len(specs)):
                        part = specs[j]
                        if part.offset >= p1:
                            break
                        lo, hi = max(p0, part.offset), min(p1, part.offset + part.nbytes)
                        if lo < hi:
                            if j not in held:
                                held[j] = allocate(part)
                            _body(held[j])[lo - part.offset : hi - part.offset] = out[lo - p0 : hi - p0]
                last = i == count - 1
                while done < len(specs) and (last or specs[done].offset + specs[done].nbytes <= p1):
                    holder = held.pop(done, None)
                    yield specs[done], holder if holder is not None else allocate(specs[done])
                    del holder
                    done += 1
        except (InvalidTag, ValueError):
            raise SealError(
                "tampered", "ciphertext failed authentication", "modified in transit or at rest"
            ) from None


def _body(holder: object) -> memoryview:
    """The writable tensor bytes of what ``SealedFile._walk`` 's ``allocate`` returned."""
    if isinstance(holder, np.ndarray):
        return holder.data
    assert isinstance(holder, tuple)
    return holder[1]


def _fresh_ndarray(nbytes: int) -> np.ndarray:
    return np.empty(nbytes, np.uint8)


def _fresh_array(spec: env.Spec) -> tuple[bytes, memoryview]:
    """New ``np.save`` bytes for ``spec`` (header written) and a writable view of its tensor part."""
    prefix = npy_prefix(spec.dtype, spec.shape)
    data, view = fresh_bytes(len(prefix) + spec.nbytes)
    view[: len(prefix)] = prefix
    body = view[len(prefix) :]
    view.release()
    return data, body


def verify_sealed_file(
    span: FileSpan,
    *,
    aggregator_key: AggregatorKey,
    expected_run_id: int,
    expected_round: int,
    expected_node_id: int,
    expected_stage: str,
    device_signing_pub: Ed25519PublicKey,
) -> SealedFile:
    """Every check of :func:`~fedge.security.seal.open_sealed` before decryption, on a file.

    Same checks, same order, same reasons (framing, algorithm, manifest, signature over the
    chunk tags read from the file, context, key unwrap); decryption and its ``tampered`` check
    happen in :meth:`SealedFile.arrays` / :meth:`SealedFile.record`.
    """
    fd = os.open(span.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        head = memoryview(os.pread(fd, min(span.length, env.MAX_HEADER_BYTES + 32), span.offset))
        header_bytes, ct_at, ct_len = env.split_head(head, span.length)
        ct_offset = span.offset + ct_at
        signature = env.split_signature(memoryview(os.pread(fd, 2 + env.SIG_LEN, ct_offset + ct_len)))

        def read(start: int, end: int) -> bytes:
            data = os.pread(fd, end - start, ct_offset + start)
            if len(data) != end - start:
                raise env.malformed("the sealed payload ends early")
            return data

        header, specs, total, payload_key = _verified(
            header_bytes,
            ct_len,
            read,
            signature,
            aggregator_key,
            (expected_run_id, expected_round, expected_node_id, expected_stage),
            device_signing_pub,
        )
        digest = hashlib.sha256(header_bytes).digest()
    except BaseException:
        os.close(fd)
        raise
    return SealedFile(fd, ct_offset, header, digest, specs, total, payload_key)


def open_sealed_file(
    span: FileSpan,
    *,
    aggregator_key: AggregatorKey,
    expected_run_id: int,
    expected_round: int,
    expected_node_id: int,
    expected_stage: str,
    device_signing_pub: Ed25519PublicKey,
) -> ArrayRecord:
    """:func:`~fedge.security.seal.open_record` of a sealed payload in a file, chunk by chunk.

    Same checks, in the same order, as :func:`~fedge.security.seal.open_sealed`. The run worker
    holds the opened update once and never the sealed payload: a reply costs one model, not
    three (sealed bytes, plaintext, ``Array`` copies).
    """
    sealed = verify_sealed_file(
        span,
        aggregator_key=aggregator_key,
        expected_run_id=expected_run_id,
        expected_round=expected_round,
        expected_node_id=expected_node_id,
        expected_stage=expected_stage,
        device_signing_pub=device_signing_pub,
    )
    try:
        return sealed.record()
    finally:
        sealed.close()
