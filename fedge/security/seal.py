"""Sealed updates: a client's reply tensors, encrypted to the run's aggregator and signed by the device.

Why: TLS ends at the first proxy and does not cover data at rest. A sealed update stays
confidential (only the holder of the run's aggregator key can read it), authenticated (the
device's Ed25519 key signed it) and bound to its context (run, round, node, stage): a replay of
last round's update, or an update moved to another node or stage, is refused.

Scheme (``ALGORITHM``)
----------------------
1. The server creates an X25519 aggregator key per run and announces the public half signed with
   its Ed25519 key (:func:`new_aggregator_key`, checked by clients with :func:`verify_announcement`).
2. :func:`seal` draws a fresh 256-bit payload key and wraps it with HPKE (RFC 9180, base mode,
   DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM) to the aggregator key; HPKE ``info``
   binds run, round, node, stage and key id. The HPKE output goes in ``SealHeader.enc``.
3. The tensors' raw bytes (layout in ``SealHeader.manifest``) are encrypted with AES-256-GCM under
   the payload key in 1 MiB chunks: nonce_i = base_nonce XOR i, associated data =
   SHA-256(serialized header) ‖ i ‖ final-flag. So the whole header is authenticated, and
   truncating, reordering or splicing chunks fails.
4. The device signs ``domain ‖ len(header) ‖ header ‖ all chunk tags`` with Ed25519.

Decision (measured with bench/seal.py: one pinned core, medians, GB/s of tensor bytes)
-------------------------------------------------------------------------------------
* The ``hpke`` module offers exactly the suite (X25519 / HKDF-SHA256 / AES-256-GCM), so the key
  schedule is HPKE, not a hand composition. Its public API is single-shot only, though: no
  streaming, no exporter, no AAD, fresh ``bytes`` in and out. So HPKE wraps a fresh 32-byte
  payload key (~0.1 ms for wrap + unwrap) and the bulk is chunked AES-GCM ``encrypt_into`` /
  ``decrypt_into``, straight from the tensors into the output, and from the input into one numpy
  plaintext buffer (numpy asks for transparent huge pages, which fault far cheaper here)::

      payload   raw GCM   seal+open   HPKE single-shot (no signature/framing)
      1 MiB       ~10       ~2.5        ~4.2    fixed costs: HPKE + Ed25519 ≈ 0.2 ms
      16 MiB      ~9        ~4.6-5.1    ~3.9-4.7
      100 MiB     ~8        ~0.9-1.4    ~0.7    (3-5 with glibc told to keep freed memory)

  Single-shot is on par at 16 MiB in a warm heap but half as fast at 100 MiB (each of its three
  full-size fresh buffers pays page faults above glibc's 32 MB mmap threshold: ~1.7 µs per 4 KiB
  page on this VM), holds three copies at peak, and yields read-only arrays. Chunked wins.
  At 100 MiB the one unavoidable copy, ``seal``'s ``bytes`` result (Flower records need
  ``bytes``), dominates: that is allocator cost, not cryptography.
* The signature covers the chunk tags, not a hash of the ciphertext: SHA-256 runs at 2 GB/s
  here, and hashing on both sides would cap seal+open below 1 GB/s. For anyone without the
  payload key (proxies, other devices, storage) this is as strong: the signed header fixes the
  key, and changing the ciphertext while keeping the tags is a GCM forgery. The aggregator,
  which can unwrap the key, could forge ciphertexts with equal tags, so a stored envelope is not
  third-party proof of the exact plaintext (non-repudiation is out of scope).

Checks in :func:`open_sealed`, in order: framing and header (``malformed``), algorithm
(``unsupported``), manifest (``malformed``: every declared size against the received length,
before any allocation), signature (``bad-signature``), then — now that the header is
authenticated — run, key, node, stage and round (``wrong-run``, ``wrong-key``, ``wrong-node``,
``wrong-stage``, ``replay`` for an older round, ``wrong-round`` for a newer one), then
decryption (``tampered``). So a reason other than ``malformed``/``unsupported``/``bad-signature``
describes what a genuine device really sent.
Not covered here: a second submission of the same round's update (the server keeps one reply
per node and round), and aggregator key expiry on open (stored updates must stay readable).
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable, Mapping

import numpy as np
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from flwr.app import ArrayRecord, ConfigRecord

from fedge.buffers import fresh_bytes
from fedge.codec import array_from_numpy, array_view
from fedge.protos.v1 import envelope_pb2
from fedge.security import _envelope as env
from fedge.security._announce import (
    AggregatorKey,
    announce_key,
    key_id_for,
    lp,
    new_aggregator_key,
    verify_announcement,
)
from fedge.security._envelope import SealError, wire_dtype

__all__ = [
    "ALGORITHM",
    "SEALED_KEY",
    "AggregatorKey",
    "announce_key",
    "SealError",
    "key_id_for",
    "new_aggregator_key",
    "open_record",
    "open_sealed",
    "seal",
    "seal_record",
    "verify_announcement",
]

ALGORITHM = "fedge-seal-v1/hpke-x25519-sha256-aes256gcm/aes256gcm-1mib-stream/ed25519"
SEALED_KEY = "sealed"  #: ConfigRecord key holding the sealed bytes

_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
_ENC_LEN = hpke.KEM.X25519.enc_length() + 32 + env.TAG  # encapsulated key ‖ wrapped key ‖ tag
_NONCE_LEN = 12
_SIG_DOMAIN = b"fedge-seal-v1 signature\x00"
_EMPTY = memoryview(b"")
_WRAP_DOMAIN = b"fedge-seal-v1 key wrap\x00"


def _wrap_info(run_id: int, round: int, node_id: int, stage: str, key_id: str) -> bytes:
    return (
        _WRAP_DOMAIN + struct.pack(">QQQ", run_id, round, node_id) + lp(stage.encode()) + lp(key_id.encode())
    )


def _chunk_aad(digest: bytes, i: int, final: bool) -> bytes:
    return digest + struct.pack(">QB", i, final)


def _chunk_nonce(base: int, i: int) -> bytes:
    return (base ^ i).to_bytes(_NONCE_LEN, "big")


def _signed_message(header: memoryview | bytes, tags: bytes) -> bytes:
    return b"".join([_SIG_DOMAIN, struct.pack(">I", len(header)), header, tags])


def seal(
    arrays: Mapping[str, np.ndarray],
    *,
    announcement: envelope_pb2.AggregatorAnnouncement,
    run_id: int,
    round: int,
    node_id: int,
    stage: str,
    device_key: Ed25519PrivateKey,
    consumed: Callable[[str], None] | None = None,
) -> bytes:
    """Encrypt ``arrays`` to the aggregator and sign them; returns a serialized ``SealedPayload``.

    Parameters
    ----------
    arrays : Mapping[str, np.ndarray]
        Named tensors (plain numeric dtypes), kept in order; non-contiguous ones are copied.
    announcement : AggregatorAnnouncement
        The run's aggregator key, already checked with :func:`verify_announcement`.
    run_id, round, node_id, stage
        The context the update is bound to; the server checks each of them.
    device_key : Ed25519PrivateKey
        This device's signing key (its public half is bound to the node at enrollment).
    consumed : Callable[[str], None], optional
        Told each tensor's name once all its bytes are encrypted; ``seal`` then holds no
        reference to it any more, so a caller that drops its own frees the plaintext while the
        sealed copy grows: about one model at the peak instead of two (issue 16).
    """
    if announcement.run_id != run_id:
        raise SealError("wrong-run", f"announcement is for run {announcement.run_id}, not run {run_id}")
    if announcement.key_id != key_id_for(announcement.x25519_public) or len(announcement.x25519_public) != 32:
        raise env.malformed("announcement public key or key id is invalid")
    pairs = ((name, _contiguous(value)) for name, value in arrays.items())
    tensors = [(name, arr, wire_dtype(arr.dtype)) for name, arr in pairs]
    manifest, segments, total = env.build_manifest(tensors)
    # (plaintext end, name, index of its segment or -1) in order, for ``consumed``.
    ends, at = [], 0
    for spec in manifest:
        ends.append((spec.offset + spec.nbytes, spec.name, at if spec.nbytes else -1))
        at += 1 if spec.nbytes else 0
    del tensors

    payload_key = AESGCM.generate_key(256)
    info = _wrap_info(run_id, round, node_id, stage, announcement.key_id)
    enc = _SUITE.encrypt(payload_key, X25519PublicKey.from_public_bytes(announcement.x25519_public), info)
    nonce = os.urandom(_NONCE_LEN)
    header = envelope_pb2.SealHeader(
        run_id=run_id,
        round=round,
        node_id=node_id,
        stage=stage,
        key_id=announcement.key_id,
        enc=enc,
        nonce=nonce,
        algorithm=ALGORITHM,
        manifest=manifest,
    ).SerializeToString(deterministic=True)
    if len(header) > env.MAX_HEADER_BYTES or len(manifest) > env.MAX_TENSORS:
        raise ValueError(f"too many tensors to seal in one payload ({len(manifest)})")

    ct_len = env.ciphertext_len(total)
    prefix, size = env.frame(header, ct_len)
    # Encrypted straight into the bytes that are returned: no model-sized scratch, no copy.
    out, view = fresh_bytes(size)
    view[: len(prefix)] = prefix
    ciphertext = view[len(prefix) : len(prefix) + ct_len]
    aead, digest, base = AESGCM(payload_key), hashlib.sha256(header).digest(), int.from_bytes(nonce, "big")
    count = env.n_chunks(total)
    k = 0
    for i, chunk in enumerate(env.plaintext_chunks(segments, total)):
        _, p1, c0, c1 = env.chunk_bounds(i, total)
        aead.encrypt_into(
            _chunk_nonce(base, i), chunk, _chunk_aad(digest, i, i == count - 1), ciphertext[c0:c1]
        )
        del chunk
        while consumed is not None and k < len(ends) and ends[k][0] <= p1:
            if ends[k][2] >= 0:
                segments[ends[k][2]] = (segments[ends[k][2]][0], _EMPTY)
            consumed(ends[k][1])
            k += 1

    def sealed(start: int, end: int) -> memoryview:
        return ciphertext[start:end]

    tags = _tags(sealed, total)
    signature = device_key.sign(_signed_message(header, tags))
    view[len(prefix) + ct_len :] = env.signature_field(signature)
    return out  # the views into it die with this frame


def _contiguous(value: np.ndarray) -> np.ndarray:
    arr = np.asarray(value)
    return arr if arr.flags.c_contiguous else arr.copy(order="C")  # (ascontiguousarray makes 0-d 1-d)


def _tags(source: memoryview | Callable[[int, int], bytes | memoryview], total: int) -> bytes:
    """Every chunk's tag, in order; ``source`` is the ciphertext or ``read(start, end)`` of it."""
    read = source if callable(source) else (lambda start, end: source[start:end])
    ends = (env.chunk_bounds(i, total)[3] for i in range(env.n_chunks(total)))
    return b"".join(read(end - env.TAG, end) for end in ends)


def open_sealed(
    data: bytes | memoryview,
    *,
    aggregator_key: AggregatorKey,
    expected_run_id: int,
    expected_round: int,
    expected_node_id: int,
    expected_stage: str,
    device_signing_pub: Ed25519PublicKey,
) -> dict[str, np.ndarray]:
    """Verify and decrypt a sealed payload; returns name → array, in the sealed order.

    The arrays are writable zero-copy views into one freshly allocated plaintext buffer. Every
    refusal raises :class:`SealError` with a ``reason`` (see the module docstring for the order).

    Parameters
    ----------
    data : bytes | memoryview
        A serialized ``SealedPayload`` as received (untrusted); read in place, never copied.
    aggregator_key : AggregatorKey
        The run's private aggregator key.
    expected_run_id, expected_round, expected_node_id, expected_stage
        What the server expects: the current run and round, the node the stream is authenticated
        as (from its certificate, never from the payload) and the instruction's message type.
    device_signing_pub : Ed25519PublicKey
        The Ed25519 key bound to ``expected_node_id`` at enrollment.
    """
    raw = memoryview(data).cast("B")
    header_bytes, ciphertext, signature = env.split(raw)
    header, specs, total, payload_key = _verified(
        header_bytes,
        len(ciphertext),
        lambda start, end: ciphertext[start:end],
        signature,
        aggregator_key,
        (expected_run_id, expected_round, expected_node_id, expected_stage),
        device_signing_pub,
    )
    try:
        plaintext = np.empty(total, np.uint8)  # bounded: total <= len(data), checked above
        out = plaintext.data
        aead, digest = AESGCM(payload_key), hashlib.sha256(header_bytes).digest()
        base, count = int.from_bytes(header.nonce, "big"), env.n_chunks(total)
        for i in range(count):
            p0, p1, c0, c1 = env.chunk_bounds(i, total)
            aead.decrypt_into(
                _chunk_nonce(base, i), ciphertext[c0:c1], _chunk_aad(digest, i, i == count - 1), out[p0:p1]
            )
    except (InvalidTag, ValueError):
        raise SealError(
            "tampered", "ciphertext failed authentication", "modified in transit or at rest"
        ) from None
    return {s.name: _view(plaintext, s) for s in specs}


def _verified(
    header_bytes: memoryview,
    ct_len: int,
    read: Callable[[int, int], bytes | memoryview],
    signature: bytes | memoryview,
    aggregator_key: AggregatorKey,
    expected: tuple[int, int, int, str],
    device_signing_pub: Ed25519PublicKey,
) -> tuple[envelope_pb2.SealHeader, list[env.Spec], int, bytes]:
    """Every check of :func:`open_sealed` before decryption; returns header, specs, length, payload key.

    ``read(start, end)`` returns ciphertext bytes (only the chunk tags are read here).
    """
    expected_run_id, expected_round, expected_node_id, expected_stage = expected
    try:
        header = envelope_pb2.SealHeader.FromString(header_bytes.tobytes())
    except Exception as exc:  # DecodeError, bad UTF-8, …: be total on untrusted bytes
        raise env.malformed("header does not parse") from exc
    if header.algorithm != ALGORITHM:
        raise SealError(
            "unsupported", f"algorithm {header.algorithm[:80]!r}", f"this fedge speaks {ALGORITHM}"
        )
    if len(header.enc) != _ENC_LEN or len(header.nonce) != _NONCE_LEN:
        raise env.malformed("wrapped key or nonce has the wrong length")
    specs, total = env.read_manifest(header, max_total=ct_len)
    if env.ciphertext_len(total) != ct_len:
        raise env.malformed(f"ciphertext is {ct_len} bytes; the manifest implies {env.ciphertext_len(total)}")
    try:
        device_signing_pub.verify(bytes(signature), _signed_message(header_bytes, _tags(read, total)))
    except InvalidSignature:
        raise SealError(
            "bad-signature",
            f"not signed by the device key of node {expected_node_id}",
            "a forged or modified update, or the node's key was re-enrolled",
        ) from None
    _check_context(header, aggregator_key, expected_run_id, expected_round, expected_node_id, expected_stage)
    info = _wrap_info(header.run_id, header.round, header.node_id, header.stage, header.key_id)
    try:
        payload_key = _SUITE.decrypt(header.enc, aggregator_key.private_key, info)
    except (InvalidTag, ValueError):
        raise SealError("tampered", "the wrapped payload key failed authentication", "modified") from None
    return header, specs, total, payload_key


def _view(plaintext: np.ndarray, spec: env.Spec) -> np.ndarray:
    return plaintext[spec.offset : spec.offset + spec.nbytes].view(spec.dtype).reshape(spec.shape)


def _check_context(
    header: envelope_pb2.SealHeader, key: AggregatorKey, run_id: int, round: int, node_id: int, stage: str
) -> None:
    if header.run_id != run_id:
        raise SealError("wrong-run", f"sealed for run {header.run_id}, expected run {run_id}")
    if header.key_id != key.key_id:
        raise SealError(
            "wrong-key", f"sealed to key {header.key_id[:80]!r}, this run's key is {key.key_id!r}"
        )
    if header.node_id != node_id:
        raise SealError("wrong-node", f"sealed by node {header.node_id} but received from node {node_id}")
    if header.stage != stage:
        raise SealError("wrong-stage", f"sealed for stage {header.stage[:40]!r}, expected {stage!r}")
    if header.round < round:
        raise SealError("replay", f"sealed for round {header.round}, current round is {round}")
    if header.round > round:
        raise SealError("wrong-round", f"sealed for round {header.round}, current round is {round}")


# -- Flower record helpers -----------------------------------------------------------------------


def seal_record(
    record: ArrayRecord,
    *,
    announcement: envelope_pb2.AggregatorAnnouncement,
    run_id: int,
    round: int,
    node_id: int,
    stage: str,
    device_key: Ed25519PrivateKey,
) -> ConfigRecord:
    """:func:`seal` an ``ArrayRecord`` into a ``ConfigRecord`` ``{SEALED_KEY: bytes}``.

    ``record`` is emptied as it is sealed (each array once encrypted): the reply it belonged to
    carries the sealed record instead, and its plaintext must not sit beside the sealed copy.
    """
    views = {name: array_view(array) for name, array in record.items()}

    def consumed(name: str) -> None:
        views.pop(name, None)
        record.pop(name, None)

    sealed = seal(
        views,
        consumed=consumed,
        announcement=announcement,
        run_id=run_id,
        round=round,
        node_id=node_id,
        stage=stage,
        device_key=device_key,
    )
    return ConfigRecord({SEALED_KEY: sealed})


def open_record(
    record: ConfigRecord,
    *,
    aggregator_key: AggregatorKey,
    expected_run_id: int,
    expected_round: int,
    expected_node_id: int,
    expected_stage: str,
    device_signing_pub: Ed25519PublicKey,
) -> ArrayRecord:
    """Inverse of :func:`seal_record`: names, order, dtypes and shapes come back exactly."""
    sealed = record.get(SEALED_KEY)
    if not isinstance(sealed, bytes):
        raise env.malformed(f"record has no bytes under {SEALED_KEY!r}")
    arrays = open_sealed(
        sealed,
        aggregator_key=aggregator_key,
        expected_run_id=expected_run_id,
        expected_round=expected_round,
        expected_node_id=expected_node_id,
        expected_stage=expected_stage,
        device_signing_pub=device_signing_pub,
    )
    return ArrayRecord({name: array_from_numpy(arr) for name, arr in arrays.items()})
