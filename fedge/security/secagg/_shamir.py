"""Shamir t-of-n secret sharing over the prime field GF(2^521 - 1), with Python integers.

A Mersenne prime well above 2^256 lets a 32-byte secret be a single field element (no splitting
into blocks), and reconstruction can *detect* a wrong result: interpolating too few or corrupted
shares yields an essentially uniform field element, which exceeds the secret's byte length with
probability 1 - 2^-(521 - 8·length), so :func:`shamir_combine` raises instead of returning garbage.
Shares are only ever sent AEAD-encrypted; this module gives secrecy, not integrity.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence

from fedge.security.secagg._errors import SecAggError

PRIME = 2**521 - 1
SHARE_LEN = (PRIME.bit_length() + 7) // 8  #: 66 bytes: one field element, big-endian


def _points(ids: Sequence[int]) -> list[int]:
    """Evaluation points ``id mod p``; 0 would hand out the secret itself, duplicates break interpolation."""
    xs = [i % PRIME for i in ids]
    if 0 in xs:
        raise SecAggError(
            "a Shamir share id maps to 0 in the field", "share ids must not be multiples of 2^521-1"
        )
    if len(set(xs)) != len(xs):
        raise SecAggError("duplicate Shamir share ids", "give every share holder a distinct id")
    return xs


def shamir_split(secret: bytes, t: int, ids: Sequence[int]) -> dict[int, bytes]:
    """Split ``secret`` so that any ``t`` of the returned shares rebuild it and ``t - 1`` reveal nothing.

    Parameters
    ----------
    secret : bytes
        At most 65 bytes (it must be below p as an integer); SecAgg+ shares 32-byte seeds and keys.
    t : int
        Threshold: the polynomial has degree ``t - 1``.
    ids : Sequence[int]
        Share holders; each one's share is the polynomial evaluated at ``id mod p``.

    Returns
    -------
    dict[int, bytes]
        id -> share, each exactly :data:`SHARE_LEN` bytes.
    """
    if len(secret) > SHARE_LEN - 1:
        raise SecAggError(
            f"a {len(secret)}-byte secret is too long for Shamir sharing", "share at most 65 bytes"
        )
    if not 1 <= t <= len(ids):
        raise SecAggError(
            f"cannot split a secret {t}-of-{len(ids)}", "need 1 <= t <= number of share holders"
        )
    xs = _points(ids)
    coeffs = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(t - 1)]
    shares = {}
    for node, x in zip(ids, xs, strict=True):
        y = 0
        for c in reversed(coeffs):  # Horner
            y = (y * x + c) % PRIME
        shares[node] = y.to_bytes(SHARE_LEN, "big")
    return shares


def shamir_combine(shares: Mapping[int, bytes], length: int = 32) -> bytes:
    """Rebuild a ``length``-byte secret by Lagrange interpolation at 0 through *all* given shares.

    Using every share (not just the first t) means one corrupted share anywhere makes the result
    fall outside ``length`` bytes, which is detected, rather than being silently ignored.

    Raises
    ------
    SecAggError
        If a share is malformed, or the interpolated value does not fit in ``length`` bytes (too few
        shares, shares of different secrets, or tampering).
    """
    if not shares:
        raise SecAggError("no Shamir shares to combine", "collect at least t shares")
    ids = list(shares)
    xs = _points(ids)
    ys = []
    for node in ids:
        raw = shares[node]
        y = int.from_bytes(raw, "big")
        if len(raw) != SHARE_LEN or y >= PRIME:
            raise SecAggError(
                f"malformed Shamir share from node {node}", "the share was corrupted in transit"
            )
        ys.append(y)
    secret = 0
    for j, (xj, yj) in enumerate(zip(xs, ys, strict=True)):
        num = den = 1
        for m, xm in enumerate(xs):
            if m != j:
                num = num * xm % PRIME
                den = den * (xm - xj) % PRIME
        secret = (secret + yj * num * pow(den, -1, PRIME)) % PRIME
    if secret.bit_length() > 8 * length:
        raise SecAggError(
            f"{len(shares)} Shamir shares do not reconstruct a {length}-byte secret",
            "too few shares, shares of different secrets, or a tampered share",
        )
    return secret.to_bytes(length, "big")
