"""Enrollment tokens (private; re-exported by :mod:`fedge.security.pki`).

A token lets one device, with one name, obtain one certificate, once, before it expires. The operator
creates it (``fedge pki token create``) and hands it to the device out of band; the device presents
it with its CSR. Only the token's SHA-256 is stored (``tokens.json``), so reading the PKI directory's
state does not let anyone enroll: tokens carry 256 random bits, so a plain hash (no salt, no slow
KDF) is enough, and looking the hash up in a dict leaks nothing useful through timing.
"""

from __future__ import annotations

import datetime as dt
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import hashes

from fedge.errors import FedgeError
from fedge.security._state import iso, locked, parse_iso, read_json, write_json
from fedge.security._x509 import check_name, utc

TOKEN_BYTES = 32
#: Certificate roles a token can grant (see :func:`create_token`).
ROLES = ("device", "relay")
#: Used and expired entries are kept this long (for `why did enrollment fail`), then pruned.
_KEEP = dt.timedelta(days=30)


class TokenRefused(FedgeError):
    """A token that cannot be spent. ``public`` says why without naming a device or a time.

    The full message (whose token, used or expired when) is for the operator's audit log; whoever
    presented the token over the network gets only ``public``, so a stolen or guessed token does
    not tell its holder which device it belonged to or when that device enrolled.
    """

    def __init__(self, message: str, hint: str, public: str) -> None:
        super().__init__(message, hint)
        self.public = public


def token_hash(token: str) -> str:
    """SHA-256 of a token, hex: the only form a token is stored in."""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(token.encode("utf-8"))
    return digest.finalize().hex()


def create_token(
    path: Path, name: str, ttl_seconds: float, *, now: dt.datetime | None = None, role: str = "device"
) -> str:
    """Create a single-use token for device ``name`` valid ``ttl_seconds``; returns it (shown once).

    ``role`` is what the certificate enrolled with it may do: ``device``, or ``relay`` (a device
    that also serves devices, :mod:`fedge.relay`). The operator decides it here, never the CSR.
    """
    if role not in ROLES:
        raise FedgeError(f"unknown certificate role {role!r}", f"use one of: {', '.join(ROLES)}")
    check_name(name, "device name")
    if ttl_seconds <= 0:
        raise FedgeError(f"token lifetime must be positive, got {ttl_seconds:g} s", "use e.g. --ttl 24h")
    when = utc(now)
    token = secrets.token_urlsafe(TOKEN_BYTES)
    with locked(path.parent):
        data = read_json(path)
        entries = {
            h: e
            for h, e in data.get("tokens", {}).items()
            if parse_iso(e["expires_at"]) + _KEEP > when  # prune long-dead entries
        }
        entries[token_hash(token)] = {
            "name": name,
            "created_at": iso(when),
            "expires_at": iso(when + dt.timedelta(seconds=ttl_seconds)),
            "used_at": None,
            "role": role,
        }
        write_json(path, {"version": 1, "tokens": entries})
    return token


def consume_token(path: Path, token: str, name: str, *, now: dt.datetime | None = None) -> str:
    """Spend ``token`` for device ``name``, returning its role, or raise :class:`TokenRefused`.

    A token presented with the wrong name is not spent (a typo must not burn it); an unknown, used or
    expired one changes nothing.
    """
    when = utc(now)
    key = token_hash(token.strip())
    with locked(path.parent):
        data = read_json(path)
        entry = data.get("tokens", {}).get(key)
        if entry is None:
            raise TokenRefused(
                "unknown enrollment token",
                "copy the whole token printed by `fedge pki token create`, or create a new one",
                public="unknown enrollment token",
            )
        if entry.get("revoked_at"):
            raise TokenRefused(
                f"enrollment token for {entry['name']!r} was invalidated at {entry['revoked_at']}"
                f" when {entry['name']!r} was revoked",
                f"create a new one with `fedge pki token create --name {entry['name']}`",
                public="enrollment token was invalidated",
            )
        if entry["used_at"] is not None:
            raise TokenRefused(
                f"enrollment token for {entry['name']!r} was already used at {entry['used_at']}",
                f"tokens are single-use; create another: `fedge pki token create --name {entry['name']}`",
                public="enrollment token already used",
            )
        expires = parse_iso(entry["expires_at"])
        if when >= expires:
            raise TokenRefused(
                f"enrollment token for {entry['name']!r} expired at {iso(expires)}",
                f"create a new one with `fedge pki token create --name {entry['name']}`",
                public="enrollment token expired",
            )
        if entry["name"] != name:
            raise TokenRefused(
                f"enrollment token was created for {entry['name']!r}, not {name!r}",
                f"start the device with --name {entry['name']}, or create a token for {name!r}",
                public="enrollment token was created for another device name",
            )
        entry["used_at"] = iso(when)
        write_json(path, data)
    return str(entry.get("role", "device"))  # tokens made before roles existed are device tokens


def token_role(path: Path, token: str) -> str:
    """The role a token grants (``device`` if it is unknown: spending it will say why it fails)."""
    entry = read_json(path).get("tokens", {}).get(token_hash(token.strip()))
    return str(entry.get("role", "device")) if entry else "device"


def drop_tokens(path: Path, name: str, *, now: dt.datetime | None = None) -> int:
    """Invalidate every unused token of ``name`` (on revocation); returns how many. Caller holds the lock."""
    data = read_json(path)
    dropped = 0
    for entry in data.get("tokens", {}).values():
        if entry["name"] == name and entry["used_at"] is None and not entry.get("revoked_at"):
            entry["revoked_at"] = iso(utc(now))
            dropped += 1
    if dropped:
        write_json(path, data)
    return dropped
