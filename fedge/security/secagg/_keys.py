"""Key agreement and share encryption: X25519 -> HKDF-SHA256 -> pair seeds and AES-256-GCM keys.

Both parties of a pair derive the same secret from their own private key and the other's public
key; the HKDF info binds it to its purpose, the round tag and the *sorted* pair of node ids, so a
pair seed can never be confused with a share key, another round's key, or another pair's key.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedge.security.secagg._errors import SecAggError
from fedge.security.secagg._params import id_bytes
from fedge.security.secagg._shamir import SHARE_LEN

KEY_LEN = 32  #: raw X25519 public and private key length
NONCE_LEN = 12
SHARES_CT_LEN = NONCE_LEN + 2 * SHARE_LEN + 16  #: nonce ‖ (b-share ‖ s_sk-share) ‖ GCM tag
_PAIR_INFO = b"fedge-secagg/v1/pair-seed"
_SHARE_KEY_INFO = b"fedge-secagg/v1/share-key"
_SHARE_AD = b"fedge-secagg/v1/shares"


def public_key(raw: bytes, node: int) -> X25519PublicKey:
    """Parse a peer's advertised key, naming the node if it is malformed."""
    if not isinstance(raw, bytes) or len(raw) != KEY_LEN:
        raise SecAggError(f"node {node} advertised a malformed X25519 key", "the key must be 32 raw bytes")
    return X25519PublicKey.from_public_bytes(raw)


def raw_public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def _agree(
    own: X25519PrivateKey, peer: X25519PublicKey, info: bytes, tag: bytes, me: int, other: int
) -> bytes:
    """HKDF(X25519(own, peer)) with info = purpose ‖ round tag ‖ sorted(me, other)."""
    try:
        shared = own.exchange(peer)
    except ValueError as exc:  # low-order point: the shared secret would be all zeros
        raise SecAggError(
            f"key agreement with node {other} failed: {exc}", f"node {other} sent an invalid key"
        ) from exc
    lo, hi = sorted((me, other))
    full_info = info + tag + id_bytes(lo) + id_bytes(hi)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=full_info).derive(shared)


def pair_seed(own: X25519PrivateKey, peer: X25519PublicKey, tag: bytes, me: int, other: int) -> bytes:
    """Seed of the pairwise mask between ``me`` and ``other`` (the same from both sides)."""
    return _agree(own, peer, _PAIR_INFO, tag, me, other)


def _aead(own: X25519PrivateKey, peer: X25519PublicKey, tag: bytes, me: int, other: int) -> AESGCM:
    return AESGCM(_agree(own, peer, _SHARE_KEY_INFO, tag, me, other))


def _ad(tag: bytes, src: int, dst: int) -> bytes:
    return _SHARE_AD + tag + id_bytes(src) + id_bytes(dst)


def seal_shares(
    own: X25519PrivateKey, peer: X25519PublicKey, tag: bytes, src: int, dst: int, data: bytes
) -> bytes:
    """Encrypt ``src``'s shares for ``dst``: nonce ‖ AES-GCM(data), with (round, src, dst) as associated data.

    Binding the direction stops the server from reflecting a ciphertext back to its sender or
    forwarding it to another node; binding the round stops replay across rounds.
    """
    nonce = os.urandom(NONCE_LEN)
    return nonce + _aead(own, peer, tag, src, dst).encrypt(nonce, data, _ad(tag, src, dst))


def open_shares(
    own: X25519PrivateKey, peer: X25519PublicKey, tag: bytes, src: int, dst: int, blob: bytes
) -> bytes:
    """Decrypt what :func:`seal_shares` produced; any mismatch raises a SecAggError naming ``src``."""
    if not isinstance(blob, bytes) or len(blob) != SHARES_CT_LEN:
        raise SecAggError(
            f"share ciphertext from node {src} has the wrong size", "the server forwarded a damaged message"
        )
    try:
        return _aead(own, peer, tag, dst, src).decrypt(blob[:NONCE_LEN], blob[NONCE_LEN:], _ad(tag, src, dst))
    except InvalidTag as exc:
        raise SecAggError(
            f"share ciphertext from node {src} failed authentication",
            "it was tampered with, replayed from another round, or addressed to another node",
        ) from exc
