"""fedge's file-based PKI: the CA, server/admin/device certificates, enrollment tokens, revocation.

Why its own CA: node identity is the certificate subject (docs/architecture.md, security layer 1),
so the deployment must control who gets a name. One directory (``fedge pki --dir``, default
``fedge-pki``) holds it::

    ca.pem  ca.key            CA certificate / ECDSA P-256 key (0600)
    server-signing.key .pub   server's Ed25519 key: signs run announcements and model bundles
    server.pem  server.key    server TLS certificate (serverAuth, SANs = --host and --ip)
    <admin>.pem <admin>.key   admin client certificates (clientAuth + the fedge admin purpose)
    tokens.json               enrollment tokens, SHA-256 hashed, single use, expiring
    issued.json               every certificate issued: serial, name, kind, validity, fingerprint
    revoked.json              revoked serials with name and time; the server reloads it on change
    .lock                     flock serializing writers (CLI and server may both write state)

Private keys and state files are 0600, certificates 0644, a directory created here 0700.

Device private keys never come here: a device makes its keys (:func:`make_device_keys`), sends a CSR
(:func:`build_csr`) with a token, and the CA side returns a certificate (:func:`enroll_device`).

The profile, chosen for gRPC (BoringSSL) and RFC 5280 validators: ECDSA P-256 + SHA-256 for every
TLS key and certificate (Ed25519 only for application signatures), a root with pathlen 0 and no
intermediates, leaves with KeyUsage digitalSignature, one EKU, a SAN (client certificates:
``urn:fedge:id:<name>``), validity capped at the CA's and back-dated five minutes for clock skew.
Admin certificates add fedge's private admin EKU purpose; device certificates add their Ed25519
signing key in a private extension (OIDs documented in :mod:`fedge.security._x509`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from pathlib import Path

from cryptography import x509

from fedge.atomic import write_bytes
from fedge.errors import FedgeError
from fedge.security import _tokens
from fedge.security._device import (
    DeviceKeys,
    build_csr,
    check_csr,
    install_device_cert,
    load_device_keys,
    make_device_keys,
)
from fedge.security._state import (
    Pki,
    check_kind,
    iso,
    locked,
    parse_iso,
    read_json,
    record_issued,
    write_json,
)
from fedge.security._tokens import TokenRefused
from fedge.security._verify import (
    REVOKED_FILE,
    RevocationList,
    device_signing_key,
    is_admin,
    is_relay,
    verify_peer,
)
from fedge.security._x509 import (
    ADMIN_PURPOSE_OID,
    CLIENT_AUTH,
    RELAY_PURPOSE_OID,
    SERVER_AUTH,
    build_ca,
    build_leaf,
    cert_pem,
    check_host,
    check_name,
    ensure_private_dir,
    identity_san,
    new_signing_key,
    new_tls_key,
    parse_ip,
    public_pem,
    serial_hex,
    signing_key_extension,
    utc,
    write_private_key,
)

__all__ = [
    "DeviceKeys", "Enrolled", "Issued", "IssuedCert", "Pki", "RevocationList", "TokenRefused", "build_csr",
    "check_name", "consume_token", "create_token", "device_signing_key", "enroll_device", "init_pki",
    "install_device_cert", "is_admin", "is_relay", "issue_admin", "issue_server", "list_issued",
    "load_device_keys", "make_device_keys", "revoke", "sign_device_csr", "verify_peer",
]  # fmt: skip

_RESERVED = {"ca", "server", "server-signing", "tokens", "issued", "revoked"}
PathLike = str | os.PathLike[str]


@dataclasses.dataclass(frozen=True)
class Issued:
    """A certificate just issued and the files it was written to."""

    cert: x509.Certificate
    cert_path: Path
    key_path: Path


@dataclasses.dataclass(frozen=True)
class IssuedCert:
    """One line of ``issued.json`` with its state (``valid``, ``expired``, ``revoked``) at listing time."""

    name: str
    kind: str
    serial: str
    not_after: dt.datetime
    sha256: str
    state: str
    admin: bool


def init_pki(
    pki_dir: PathLike, *, ca_name: str = "fedge CA", days: int = 3650, now: dt.datetime | None = None
) -> Pki:
    """Create a CA (ECDSA P-256, self-signed) and the server's Ed25519 signing key in ``pki_dir``.

    Refuses to touch an existing PKI: replacing the CA would silently invalidate every certificate.
    """
    root = Path(pki_dir)
    if days < 1 or not 0 < len(ca_name.strip()) <= 64:
        raise FedgeError(
            f"invalid CA settings (name {ca_name!r}, {days} days)", "give a name and --days >= 1"
        )
    ensure_private_dir(root)
    when = utc(now)
    ca_key, signing = new_tls_key(), new_signing_key()
    ca = build_ca(ca_key, ca_name, when, days)
    with locked(root):
        present = [n for n in ("ca.pem", "ca.key", "server-signing.key") if (root / n).exists()]
        if present:
            raise FedgeError(
                f"a fedge PKI already exists in {root} ({', '.join(present)})",
                "use another --dir; delete this one only to start over (all its certificates become useless)",
            )
        write_private_key(root / "server-signing.key", signing)
        write_bytes(root / "server-signing.pub", public_pem(signing.public_key()))
        write_private_key(root / "ca.key", ca_key)
        write_bytes(root / "ca.pem", cert_pem(ca))  # written last: its presence marks a complete PKI
        record_issued(root, ca, "ca")
    return Pki(root)


def issue_server(
    pki_dir: PathLike,
    host: str,
    ips: tuple[str, ...] | list[str] = (),
    days: int = 825,
    *,
    force: bool = False,
    now: dt.datetime | None = None,
) -> Issued:
    """Issue the server's TLS certificate (``server.pem``/``server.key``) for ``host`` and ``ips``.

    Every name given becomes a SAN (``host`` as DNS name, or IP if it is one), since TLS clients check
    the address they dialled against the SANs only.
    """
    pki = Pki.open(pki_dir)
    if len(host) > 64:
        raise FedgeError(f"host name {host!r} is longer than 64 characters", "use a shorter DNS name")
    sans = [check_host(host)] + [parse_ip(ip) for ip in ips]
    unique = list(dict.fromkeys(sans))
    return _issue_keypair(pki, host, "server", [SERVER_AUTH], unique, days, force, now, pki.server_cert_path)


def issue_admin(
    pki_dir: PathLike,
    name: str = "admin",
    days: int = 365,
    *,
    force: bool = False,
    now: dt.datetime | None = None,
) -> Issued:
    """Issue an admin client certificate for the Control API as ``<name>.pem``/``<name>.key``.

    The admin marker is fedge's private EKU purpose (see :func:`is_admin`), next to clientAuth.
    """
    pki = Pki.open(pki_dir)
    check_name(name, "admin name")
    if name in _RESERVED:
        raise FedgeError(f"{name!r} is reserved for a PKI file", "pick another --name, e.g. admin or alice")
    purposes = [CLIENT_AUTH, ADMIN_PURPOSE_OID]
    return _issue_keypair(
        pki, name, "admin", purposes, [identity_san(name)], days, force, now, pki.root / f"{name}.pem"
    )


def _issue_keypair(
    pki: Pki,
    name: str,
    kind: str,
    purposes: list[x509.ObjectIdentifier],
    sans: list[x509.GeneralName],
    days: int,
    force: bool,
    now: dt.datetime | None,
    cert_path: Path,
) -> Issued:
    key_path = cert_path.with_suffix(".key")
    ca, ca_key = pki._ca()
    key = new_tls_key()
    with locked(pki.root):
        if cert_path.exists() and not force:
            raise FedgeError(
                f"{cert_path} already exists", "pass --force to issue a new one (the old one stays valid)"
            )
        check_kind(pki.root, name, kind)
        cert = build_leaf(
            ca, ca_key, key.public_key(), name, now=utc(now), days=days, purposes=purposes, sans=sans
        )
        write_private_key(key_path, key)
        write_bytes(cert_path, cert_pem(cert))
        record_issued(pki.root, cert, kind)
    return Issued(cert, cert_path, key_path)


def sign_device_csr(
    pki_dir: PathLike,
    csr_pem: bytes,
    name: str,
    days: int = 365,
    *,
    now: dt.datetime | None = None,
    role: str = "device",
) -> bytes:
    """Issue a device certificate (clientAuth, its Ed25519 signing key copied in) from its CSR; PEM.

    Only CN=name, the TLS key and the signing key are taken from the CSR; everything else in the
    certificate is fedge's profile, so a CSR cannot ask for the admin purpose or other extensions.
    ``role="relay"`` (granted by the operator's token, never the CSR) adds serverAuth, fedge's relay
    purpose and the DNS name ``name`` that the relay's own devices check (``_x509``'s ``<arc>.4``).
    """
    pki = Pki.open(pki_dir)
    csr, signing = check_csr(csr_pem, name)
    ca, ca_key = pki._ca()
    purposes, sans = [CLIENT_AUTH], [identity_san(name)]
    if role == "relay":
        purposes += [SERVER_AUTH, RELAY_PURPOSE_OID]
        sans.append(check_host(name))  # a relay's name must be a host name its devices can check
    with locked(pki.root):
        check_kind(pki.root, name, role)
        cert = build_leaf(
            ca,
            ca_key,
            csr.public_key(),  # type: ignore[arg-type]  # check_csr made sure it is P-256
            name,
            now=utc(now),
            days=days,
            purposes=purposes,
            sans=sans,
            extra=[signing_key_extension(signing)],
        )
        record_issued(pki.root, cert, role)
    return cert_pem(cert)


def enroll_device(
    pki_dir: PathLike,
    token: str,
    csr_pem: bytes,
    name: str,
    days: int = 365,
    *,
    now: dt.datetime | None = None,
) -> Enrolled:
    """The CA side of enrollment: check the CSR, spend the token, issue the certificate.

    The CSR and the name are checked before the token is spent, so a device with a broken CSR (or
    a name taken by another kind of certificate) keeps its token. Enrolling a name again revokes
    every earlier certificate of that name: one name is one device, and a re-enrolled (replaced,
    reset, or stolen-and-re-enrolled) device's old key must stop working at once.
    """
    pki = Pki.open(pki_dir)
    check_csr(csr_pem, name)
    role = _tokens.token_role(pki.root / "tokens.json", token)
    with locked(pki.root):
        check_kind(pki.root, name, role)  # a name clash must not burn the token
    if role == "relay":
        check_host(name)  # likewise: a relay name that is no host name is refused before spending
    role = consume_token(pki_dir, token, name, now=now)
    cert = sign_device_csr(pki_dir, csr_pem, name, days, now=now, role=role)
    current = serial_hex(x509.load_pem_x509_certificate(cert).serial_number)
    with locked(pki.root):
        earlier = [
            c["serial"]
            for c in read_json(pki.root / "issued.json").get("certs", [])
            if c["name"] == name and c["kind"] == role and c["serial"] != current
        ]
        superseded = _revoke_serials(pki.root, name, earlier, now)
    return Enrolled(cert, superseded)


@dataclasses.dataclass(frozen=True)
class Enrolled:
    """A device certificate just issued (PEM) and the serials of that name's certificates it revoked."""

    cert_pem: bytes
    superseded: list[str]


def _revoke_serials(root: Path, name: str, serials: list[str], now: dt.datetime | None) -> list[str]:
    """Add ``serials`` of ``name`` to ``revoked.json``; returns the newly revoked. Caller holds the lock."""
    data = read_json(root / REVOKED_FILE)
    entries = data.setdefault("revoked", [])
    done = {e["serial"] for e in entries}
    new = [s for s in serials if s not in done]
    entries += [{"serial": s, "name": name, "revoked_at": iso(utc(now))} for s in new]
    if new:
        write_json(root / REVOKED_FILE, {"version": 1, "revoked": entries})
    return new


def create_token(
    pki_dir: PathLike, name: str, ttl_seconds: float, *, now: dt.datetime | None = None, role: str = "device"
) -> str:
    """A single-use enrollment token for ``name`` (role ``device`` or ``relay``); shown only now."""
    if role == "relay":
        check_host(name)
    return _tokens.create_token(Pki.open(pki_dir).root / "tokens.json", name, ttl_seconds, now=now, role=role)


def consume_token(pki_dir: PathLike, token: str, name: str, now: dt.datetime | None = None) -> str:
    """Spend an enrollment token for ``name``; its role, or FedgeError (unknown/used/expired/wrong name)."""
    return _tokens.consume_token(Pki.open(pki_dir).root / "tokens.json", token, name, now=now)


def revoke(pki_dir: PathLike, name: str, *, now: dt.datetime | None = None) -> list[str]:
    """Revoke every certificate issued to ``name`` and its unused tokens; returns newly revoked serials."""
    pki = Pki.open(pki_dir)
    with locked(pki.root):
        certs = [c for c in read_json(pki.root / "issued.json").get("certs", []) if c["name"] == name]
        if not certs:
            raise FedgeError(f"no certificate was issued to {name!r}", "see the names with `fedge pki list`")
        if any(c["kind"] == "ca" for c in certs):
            raise FedgeError(
                "the CA cannot revoke itself", "create a new PKI with `fedge pki init --dir NEW`"
            )
        new = _revoke_serials(pki.root, name, [c["serial"] for c in certs], now)
        _tokens.drop_tokens(pki.root / "tokens.json", name, now=now)
    return new


def list_issued(pki_dir: PathLike, *, now: dt.datetime | None = None) -> list[IssuedCert]:
    """Every certificate the CA issued, oldest first, with its state now."""
    pki, when = Pki.open(pki_dir), utc(now)
    revoked = RevocationList.load(pki.root)
    out = []
    for c in read_json(pki.root / "issued.json").get("certs", []):
        not_after = parse_iso(c["not_after"])
        state = "revoked" if c["serial"] in revoked else "expired" if when > not_after else "valid"
        out.append(
            IssuedCert(
                c["name"], c["kind"], c["serial"], not_after, c["sha256"], state, c.get("admin", False)
            )
        )
    return out
