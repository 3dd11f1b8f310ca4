"""Reading and checking fedge certificates (private; re-exported by :mod:`fedge.security.pki`).

gRPC's TLS already refuses peers that do not chain to the CA. These checks exist for what TLS cannot
say or does not say clearly: revocation (fedge keeps its own list, checked on connect), the admin
marker, the device's signing key, and messages a person can act on ("certificate for edge-7 expired
at ...") instead of a handshake failure.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from fedge.errors import FedgeError
from fedge.security._state import iso, parse_iso, read_json
from fedge.security._x509 import (
    ADMIN_PURPOSE_OID,
    CLIENT_AUTH,
    RELAY_PURPOSE_OID,
    SERVER_AUTH,
    SIGNING_KEY_OID,
    as_cert,
    common_name,
    ekus,
    serial_hex,
    utc,
)

REVOKED_FILE = "revoked.json"
Usage = Literal["client", "server"]
_PURPOSE = {"client": CLIENT_AUTH, "server": SERVER_AUTH}
_PURPOSE_NAMES = {
    CLIENT_AUTH: "clientAuth",
    SERVER_AUTH: "serverAuth",
    ADMIN_PURPOSE_OID: "fedge-admin",
    RELAY_PURPOSE_OID: "fedge-relay",
}


def is_admin(cert: x509.Certificate | bytes | str) -> bool:
    """True if the certificate's EKU lists fedge's admin purpose (it may use the Control API).

    This reads the marker only; it does not check who signed the certificate. Call it on a peer
    certificate TLS (or :func:`verify_peer`) already verified.
    """
    return ADMIN_PURPOSE_OID in ekus(as_cert(cert))


def is_relay(cert: x509.Certificate | bytes | str) -> bool:
    """True if the certificate's EKU lists fedge's relay purpose (it may run ``fedge relay``).

    Like :func:`is_admin`, this reads the marker only; call it on a certificate TLS verified.
    """
    return RELAY_PURPOSE_OID in ekus(as_cert(cert))


def device_signing_key(cert: x509.Certificate | bytes | str) -> ed25519.Ed25519PublicKey:
    """The device's Ed25519 signing public key, carried by its certificate (FedgeError if absent)."""
    c = as_cert(cert)
    return signing_key_in(c.extensions, f"certificate for {common_name(c)!r}")


def signing_key_in(extensions: x509.Extensions, who: str) -> ed25519.Ed25519PublicKey:
    """The signing key extension of a certificate or CSR (``who`` names it in errors)."""
    try:
        value = extensions.get_extension_for_oid(SIGNING_KEY_OID).value
    except x509.ExtensionNotFound:
        raise FedgeError(
            f"{who} carries no device signing key",
            "only device certificates (issued from a CSR by `fedge pki`) have one; re-enroll the device",
        ) from None
    try:
        key = serialization.load_der_public_key(value.value)  # type: ignore[attr-defined]
    except ValueError:
        key = None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise FedgeError(f"{who} has a malformed device signing key", "re-enroll the device")
    return key


@dataclasses.dataclass(frozen=True)
class Revoked:
    """One revoked certificate."""

    serial: str
    name: str
    revoked_at: dt.datetime


_SERIALS_KEPT = 100_000


class RevocationList:
    """fedge's revocation list (``revoked.json``), kept in memory by a long-running server.

    Lookups are a set membership test on the serial. :meth:`reload_if_changed` costs one ``stat`` and
    reads the file only when it changed (``revoked.json`` is replaced atomically, so inode, size or
    mtime always change), so the server may call it on every new connection.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: dict[str, Revoked] = {}
        self._stamp: tuple[int, int, int] | None = None
        # PEM -> serial. Why: the server checks every live stream's certificate every second, and
        # parsing 10,000 certificates a second costs a core's tenth; a PEM is parsed once. Bounded
        # by the certificates seen (issued by the CA, so not by what a peer sends), and cleared
        # past _SERIALS_KEPT in any case.
        self._serials: dict[bytes | str, str] = {}
        # Counts the loads that changed the list: a watcher re-checks live streams only when it
        # moved (see fedge.server.service).
        self.generation = 0

    @classmethod
    def load(cls, pki_dir: str | os.PathLike[str]) -> RevocationList:
        """The revocation list of the PKI in ``pki_dir`` (empty if nothing was revoked yet)."""
        rl = cls(Path(pki_dir) / REVOKED_FILE)
        rl.reload_if_changed()
        return rl

    def reload_if_changed(self) -> bool:
        """Re-read the file if it changed since the last load; returns whether it did."""
        try:
            st = self.path.stat()
            stamp: tuple[int, int, int] | None = (st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp:
            return False
        entries = {}
        for e in read_json(self.path).get("revoked", []):
            entries[e["serial"]] = Revoked(e["serial"], e["name"], parse_iso(e["revoked_at"]))
        self._entries, self._stamp = entries, stamp  # one assignment each: readers see old or new
        self.generation += 1
        return True

    def get(self, cert: x509.Certificate | bytes | str) -> Revoked | None:
        """The revocation entry of this certificate, if it was revoked."""
        return self._entries.get(self._serial(cert))

    def _serial(self, cert: x509.Certificate | bytes | str) -> str:
        if isinstance(cert, x509.Certificate):
            return serial_hex(cert.serial_number)
        serial = self._serials.get(cert)
        if serial is None:
            if len(self._serials) >= _SERIALS_KEPT:
                self._serials.clear()
            serial = self._serials[cert] = serial_hex(as_cert(cert).serial_number)
        return serial

    def is_revoked(self, cert: x509.Certificate | bytes | str) -> bool:
        """True if this exact certificate (by serial) was revoked."""
        return self.get(cert) is not None

    def __contains__(self, serial: object) -> bool:
        """``"<hex serial>" in revocations``, for listings that have serials, not certificates."""
        return serial in self._entries

    def __len__(self) -> int:
        return len(self._entries)


def verify_peer(
    cert_pem: bytes | str,
    ca_pem: bytes | str,
    now: dt.datetime | None = None,
    *,
    usage: Usage = "client",
    revocations: RevocationList | None = None,
) -> str:
    """Check a peer certificate against the fedge CA and return its identity (the subject CN).

    Parameters
    ----------
    cert_pem, ca_pem
        The peer's certificate and the CA certificate, PEM.
    now
        Verification time (tests; default: the current time).
    usage
        ``"client"`` (devices, admins: clientAuth EKU required) or ``"server"`` (serverAuth).
    revocations
        Also reject certificates on this revocation list.

    Raises
    ------
    FedgeError
        Saying which check failed: issuer/signature, validity window, EKU, revocation, or the RFC 5280
        path validation that runs last (cryptography's verifier) as a backstop for everything else.
    """
    cert, ca, when = as_cert(cert_pem), as_cert(ca_pem), utc(now)
    who = f"certificate for {common_name(cert)!r}"
    reissue = "issue a new one with `fedge pki` (devices: re-enroll with a new token)"
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, InvalidSignature, TypeError):
        raise FedgeError(
            f"{who} was not issued by this fedge CA ({ca.subject.rfc4514_string()});"
            f" its issuer is {cert.issuer.rfc4514_string()}",
            "enroll the peer with this deployment's CA, or give it this deployment's ca.pem",
        ) from None
    if not ca.not_valid_before_utc <= when <= ca.not_valid_after_utc:
        raise FedgeError(
            f"the fedge CA certificate ({ca.subject.rfc4514_string()}) is valid only from"
            f" {iso(ca.not_valid_before_utc)} to {iso(ca.not_valid_after_utc)}, not at {iso(when)}",
            "check this machine's clock; an expired CA needs a new PKI (`fedge pki init`) and re-enrollment",
        )
    if when < cert.not_valid_before_utc:
        raise FedgeError(
            f"{who} is not valid before {iso(cert.not_valid_before_utc)} (it is {iso(when)} here)",
            "check the clock of this machine (NTP)",
        )
    if when > cert.not_valid_after_utc:
        raise FedgeError(f"{who} expired at {iso(cert.not_valid_after_utc)}", reissue)
    purposes = ekus(cert)
    if _PURPOSE[usage] not in purposes:
        have = ", ".join(_PURPOSE_NAMES.get(p, p.dotted_string) for p in purposes) or "none"
        raise FedgeError(
            f"{who} is not a TLS {usage} certificate (extended key usage: {have})",
            f"use a {'device or admin' if usage == 'client' else 'server'} certificate issued by `fedge pki`",
        )
    if revocations is not None and (entry := revocations.get(cert)) is not None:
        raise FedgeError(
            f"{who} (serial {entry.serial[:16]}…) was revoked at {iso(entry.revoked_at)}",
            f"re-enroll {entry.name!r} with a new token if it should be trusted again",
        )
    builder = PolicyBuilder().store(Store([ca])).time(when)
    try:
        if usage == "client":
            builder.build_client_verifier().verify(cert, [])
        else:  # check the chain for the certificate's own first name; the TLS client checks the host
            builder.build_server_verifier(_first_server_name(cert)).verify(cert, [])
    except VerificationError as exc:
        raise FedgeError(f"{who} failed certificate path validation: {exc}", reissue) from None
    return common_name(cert)


def _first_server_name(cert: x509.Certificate) -> x509.DNSName | x509.IPAddress:
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        sans = x509.SubjectAlternativeName([])
    for san in sans:
        if isinstance(san, x509.DNSName | x509.IPAddress):
            return san
    raise FedgeError(
        f"server certificate for {common_name(cert)!r} names no host (no DNS or IP SAN)",
        "issue it with `fedge pki issue-server --host NAME [--ip ADDR]`",
    )
