"""Which streams may relay: a stream's claim (its Hello) must match its certificate's role.

A relay answers for a whole subtree of devices with one reply (docs/relay.md), so being one is
the certificate's to say, never the stream's: the operator grants it with ``fedge pki token
create --relay`` (the relay EKU purpose, :func:`fedge.security.is_relay`). Both ways are refused:
a device certificate that claims to relay, and a relay certificate connecting as a plain device
(a relay's key answers for many devices; used as one device's it would hide which it is).
"""

from __future__ import annotations

from collections.abc import Iterable

from fedge.security import is_relay

#: The Hello capability by which a stream says it is a relay.
RELAY_CAPABILITY = "relay-v1"


def claims_relay(capabilities: Iterable[str]) -> bool:
    """Does a Hello's capability list claim the relay role?"""
    return RELAY_CAPABILITY in capabilities


def role_problem(cert_pem: bytes, capabilities: Iterable[str]) -> str | None:
    """Why this certificate may not open a stream with these capabilities (None: it may)."""
    relay_cert, claims = is_relay(cert_pem), claims_relay(capabilities)
    if claims and not relay_cert:
        return "a device certificate cannot relay (enroll the relay with a `--relay` token)"
    if relay_cert and not claims:
        return "a relay certificate cannot connect as a device (start it with `fedge relay start`)"
    return None
