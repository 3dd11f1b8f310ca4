"""Aggregator keys: the per-run X25519 key clients seal to, announced under the server's signature.

Private module; the public names are re-exported by :mod:`fedge.security.seal`. The announcement
is signed over an explicit fixed layout (not a protobuf re-serialization), so any implementation
can verify it byte for byte.
"""

from __future__ import annotations

import hashlib
import struct
import time
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from fedge.protos.v1 import envelope_pb2
from fedge.security._envelope import SealError, malformed

_ANNOUNCE_DOMAIN = b"fedge-seal-v1 aggregator announcement\x00"
_PIN_HINT = "check the server signing key this client pins"


def lp(data: bytes) -> bytes:
    """Length-prefixed field for signed/derived byte strings (unambiguous concatenation)."""
    return struct.pack(">I", len(data)) + data


@dataclass(frozen=True, repr=False)
class AggregatorKey:
    """The server's private X25519 key of one run; only its holder can open sealed updates."""

    run_id: int
    key_id: str
    private_key: X25519PrivateKey
    not_after: float

    def private_bytes(self) -> bytes:
        """Raw 32-byte private key, to persist it (encrypted/0600) and open stored updates later."""
        return self.private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    @classmethod
    def from_private_bytes(cls, run_id: int, raw: bytes, not_after: float) -> AggregatorKey:
        private = X25519PrivateKey.from_private_bytes(raw)
        return cls(run_id, key_id_for(_raw_public(private.public_key())), private, not_after)

    def __repr__(self) -> str:  # never print key material
        return f"AggregatorKey(run_id={self.run_id}, key_id={self.key_id!r}, not_after={self.not_after})"


def key_id_for(x25519_public: bytes) -> str:
    """Fingerprint of an aggregator public key: one key id can never name two keys."""
    return "x25519:" + hashlib.sha256(x25519_public).hexdigest()[:32]


def _raw_public(key: X25519PublicKey | Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _announcement_message(run_id: int, public: bytes, key_id: str, not_after: float) -> bytes:
    return (
        _ANNOUNCE_DOMAIN
        + struct.pack(">Q", run_id)
        + lp(public)
        + lp(key_id.encode())
        + struct.pack(">d", not_after)
    )


def new_aggregator_key(
    run_id: int, signing_key: Ed25519PrivateKey, ttl: float, *, now: float | None = None
) -> tuple[AggregatorKey, envelope_pb2.AggregatorAnnouncement]:
    """Create a run's aggregator key and its announcement signed by the server's Ed25519 key.

    Parameters
    ----------
    run_id : int
        The run the key serves; clients refuse it for any other run.
    signing_key : Ed25519PrivateKey
        The server's long-term signing key (clients pin its public half).
    ttl : float
        Seconds the announcement stays valid; clients refuse to seal to it afterwards.
    now : float | None
        Unix time (default: ``time.time()``).
    """
    private = X25519PrivateKey.generate()
    announcement = announce_key(run_id, _raw_public(private.public_key()), signing_key, ttl, now=now)
    return AggregatorKey(run_id, announcement.key_id, private, announcement.not_after), announcement


def announce_key(
    run_id: int, x25519_public: bytes, signing_key: Ed25519PrivateKey, ttl: float, *, now: float | None = None
) -> envelope_pb2.AggregatorAnnouncement:
    """The server's signed announcement of an X25519 public key someone else holds, for ``run_id``.

    Why apart from :func:`new_aggregator_key`: a relay (docs/relay.md) makes its own per-run key
    and keeps the private half; the server vouches for the public half with the very announcement
    devices already verify, so a device seals to its relay with no code of its own for relays.
    """
    if not ttl > 0:
        raise ValueError("ttl must be positive")
    if len(x25519_public) != 32:
        raise malformed("an X25519 public key is 32 bytes")
    X25519PublicKey.from_public_bytes(x25519_public)  # raises on bytes that are no key
    key_id = key_id_for(x25519_public)
    not_after = (time.time() if now is None else now) + ttl
    signature = signing_key.sign(_announcement_message(run_id, x25519_public, key_id, not_after))
    return envelope_pb2.AggregatorAnnouncement(
        run_id=run_id, x25519_public=x25519_public, key_id=key_id, not_after=not_after, signature=signature
    )


def _parse(data: bytes) -> envelope_pb2.AggregatorAnnouncement:
    try:
        return envelope_pb2.AggregatorAnnouncement.FromString(data)
    except Exception as exc:  # protobuf raises DecodeError, but be total on untrusted bytes
        raise malformed("announcement does not parse") from exc


def verify_announcement(
    ann: envelope_pb2.AggregatorAnnouncement | bytes,
    server_signing_pub: Ed25519PublicKey,
    run_id: int,
    now: float | None = None,
) -> X25519PublicKey:
    """Check an announcement (signature, run, expiry, key id); return the aggregator public key."""
    ann = _parse(ann) if isinstance(ann, bytes) else ann
    if len(ann.x25519_public) != 32 or ann.key_id != key_id_for(ann.x25519_public):
        raise malformed("announcement public key or key id is invalid")
    message = _announcement_message(ann.run_id, ann.x25519_public, ann.key_id, ann.not_after)
    try:
        server_signing_pub.verify(ann.signature, message)
    except InvalidSignature:
        raise SealError(
            "bad-signature", "aggregator announcement is not signed by the server key", _PIN_HINT
        ) from None
    if ann.run_id != run_id:
        raise SealError("wrong-run", f"announcement is for run {ann.run_id}, not run {run_id}")
    if not (time.time() if now is None else now) <= ann.not_after:
        raise SealError("expired", f"aggregator key {ann.key_id} expired", "ask the server for a fresh key")
    return X25519PublicKey.from_public_bytes(ann.x25519_public)
