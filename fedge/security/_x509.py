"""X.509 building blocks of the fedge PKI (private): keys, PEM files and the certificate profile.

Everything here is a thin composition of ``cryptography`` primitives; the public recipes live in
:mod:`fedge.security.pki`. Keeping the profile in one place makes it auditable: what a CA, a server,
an admin and a device certificate contain is decided by :func:`build_ca` and :func:`build_leaf` only.

Private OIDs
------------
fedge needs four identifiers of its own. They live under ``2.25.<uuid>`` (ITU-T X.667: a UUID turned
into an OID is globally unique without registration), the UUID being
``faf10717-f0bd-4b8c-9b30-35e1bf92c5dd``:

* ``<arc>.1`` — **admin purpose**, an ExtendedKeyUsage purpose next to ``clientAuth``. A certificate
  whose EKU lists it may use the Control API. EKU is the X.509 field made for "what may this key be
  used for", parsers understand it natively, and TLS stacks ignore purposes they do not know, so the
  marker costs nothing at the handshake.
* ``<arc>.2`` — **device signing key**, a non-critical extension whose value is the DER
  SubjectPublicKeyInfo of the device's Ed25519 key (signs sealed
  updates, docs/architecture.md, security layer 2).
  Non-critical so TLS stacks that do not know it still accept the certificate.
* ``<arc>.3`` — **signing-key proof of possession**, only in CSRs: an OCTET STRING holding an Ed25519
  signature, by that signing key, over the device name and its TLS public key. Without it a device
  could enroll another device's signing public key as its own.
* ``<arc>.4`` — **relay purpose**, an ExtendedKeyUsage purpose like the admin one: the certificate's
  holder may run ``fedge relay`` (serve devices and send the server one partial aggregate per round
  for its subtree, docs/relay.md). A relay certificate also lists ``serverAuth`` (its devices connect
  to it) and the DNS name ``<name>`` (they check it with ``--server-name <name>``). Only the operator
  grants it (``fedge pki token create --relay``); a CSR cannot ask for it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedge.atomic import write_bytes
from fedge.errors import FedgeError

FEDGE_ARC = "2.25.333558486362756071182443211036852143581"
ADMIN_PURPOSE_OID = x509.ObjectIdentifier(f"{FEDGE_ARC}.1")
SIGNING_KEY_OID = x509.ObjectIdentifier(f"{FEDGE_ARC}.2")
SIGNING_POP_OID = x509.ObjectIdentifier(f"{FEDGE_ARC}.3")
RELAY_PURPOSE_OID = x509.ObjectIdentifier(f"{FEDGE_ARC}.4")
CLIENT_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH
SERVER_AUTH = ExtendedKeyUsageOID.SERVER_AUTH

#: Certificates start this long before "now" so a device whose clock is a little behind accepts them.
BACKDATE = dt.timedelta(minutes=5)
#: Device and admin names: the server's device-name rule, capped at 64 (X.509 upper bound for a CN).
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_HOST_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9-]{1,63})*$")
_POP_CONTEXT = b"fedge-csr-signing-key-pop-v1\x00"

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def utc(now: dt.datetime | None = None) -> dt.datetime:
    """``now`` as an aware UTC datetime (naive values are taken as UTC); the current time if None."""
    if now is None:
        return dt.datetime.now(dt.UTC)
    return now.replace(tzinfo=dt.UTC) if now.tzinfo is None else now.astimezone(dt.UTC)


def check_name(name: str, what: str = "name") -> str:
    """Reject names that cannot be a certificate subject or a fedge node name."""
    if not NAME_RE.match(name or ""):
        raise FedgeError(
            f"invalid {what} {name!r}",
            "use 1-64 characters: letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    return name


def check_host(host: str) -> x509.GeneralName:
    """A server address as the SubjectAlternativeName clients will check it against."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not _HOST_RE.match(host or ""):
        raise FedgeError(
            f"invalid host name {host!r}", "give the DNS name clients use, e.g. fedge.example.com"
        )
    return x509.DNSName(host)


def parse_ip(value: str) -> x509.IPAddress:
    """An ``--ip`` value as an IP SubjectAlternativeName."""
    try:
        return x509.IPAddress(ipaddress.ip_address(value))
    except ValueError:
        raise FedgeError(
            f"invalid IP address {value!r}", "give an IPv4 or IPv6 address, e.g. 10.0.0.5"
        ) from None


def new_tls_key() -> ec.EllipticCurvePrivateKey:
    """ECDSA P-256: the key type every TLS stack (gRPC's BoringSSL included) accepts for certificates."""
    return ec.generate_private_key(ec.SECP256R1())


def new_signing_key() -> ed25519.Ed25519PrivateKey:
    """Ed25519: used for application signatures only (announcements, sealed updates, bundles)."""
    return ed25519.Ed25519PrivateKey.generate()


def write_private_key(path: Path, key: PrivateKey) -> None:
    """Unencrypted PKCS#8 PEM, mode 0600, written atomically (a daemon must start unattended)."""
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_bytes(path, pem, 0o600)


def public_pem(key: ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey) -> bytes:
    """SubjectPublicKeyInfo PEM of a public key."""
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def spki_der(key: ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey) -> bytes:
    """SubjectPublicKeyInfo DER: self-describing, so a reader checks the algorithm, not just 32 bytes."""
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_tls_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """An ECDSA private key file (CA, server, admin, device TLS key)."""
    key = _load_private_key(path)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise FedgeError(f"{path} holds a {type(key).__name__}, expected an ECDSA key", "restore the file")
    return key


def load_signing_key(path: Path) -> ed25519.Ed25519PrivateKey:
    """An Ed25519 private key file (server or device signing key)."""
    key = _load_private_key(path)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise FedgeError(f"{path} holds a {type(key).__name__}, expected an Ed25519 key", "restore the file")
    return key


def _load_private_key(path: Path) -> object:
    try:
        return serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise FedgeError(
            f"key file {path} does not exist", "check the directory, or create the keys first"
        ) from None
    except (ValueError, TypeError) as exc:
        raise FedgeError(
            f"{path} is not a readable PEM private key ({exc})", "restore it from backup"
        ) from None


def as_cert(cert: x509.Certificate | bytes | str) -> x509.Certificate:
    """A certificate from an object or its PEM (as gRPC's ``auth_context`` hands it over)."""
    if isinstance(cert, x509.Certificate):
        return cert
    data = cert.encode() if isinstance(cert, str) else cert
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise FedgeError(
            "not a PEM certificate", "pass the contents of a .pem file issued by `fedge pki`"
        ) from None


def load_cert_file(path: Path) -> x509.Certificate:
    """A certificate file; missing or unreadable files are FedgeErrors naming the file."""
    try:
        return as_cert(path.read_bytes())
    except FileNotFoundError:
        raise FedgeError(
            f"certificate file {path} does not exist", "check the path or issue it first"
        ) from None
    except FedgeError:
        raise FedgeError(f"{path} is not a PEM certificate", "restore it or issue a new one") from None


def cert_pem(cert: x509.Certificate) -> bytes:
    """PEM encoding of a certificate."""
    return cert.public_bytes(serialization.Encoding.PEM)


def common_name(cert: x509.Certificate | x509.CertificateSigningRequest) -> str:
    """The subject CN, the identity of a fedge peer ("" if there is none)."""
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = attrs[0].value if attrs else ""
    return value if isinstance(value, str) else value.decode()


def serial_hex(serial: int) -> str:
    """How fedge's state files spell a serial number."""
    return format(serial, "x")


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 fingerprint, hex, for logs and ``fedge pki list``."""
    return cert.fingerprint(hashes.SHA256()).hex()


def ekus(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    """The ExtendedKeyUsage purposes (empty if the extension is absent)."""
    try:
        return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return []


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _cn(name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])


def build_ca(key: ec.EllipticCurvePrivateKey, name: str, now: dt.datetime, days: int) -> x509.Certificate:
    """Self-signed root; pathlen 0 because fedge issues leaves directly (no intermediates)."""
    subject = _cn(name)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def build_leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    public_key: ec.EllipticCurvePublicKey,
    name: str,
    *,
    now: dt.datetime,
    days: int,
    purposes: list[x509.ObjectIdentifier],
    sans: list[x509.GeneralName],
    extra: Sequence[x509.ExtensionType] = (),
) -> x509.Certificate:
    """An end-entity certificate: CN=name, the given EKU purposes and SANs, never outliving the CA.

    Leaves always carry a SubjectAlternativeName: RFC 5280 validators (cryptography's own, rustls,
    Go) reject leaves without one, even for client certificates.
    """
    if days < 1:
        raise FedgeError(f"validity of {days} days is too short", "use --days 1 or more")
    not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_cn(name))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(purposes), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    for ext in extra:
        builder = builder.add_extension(ext, critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def identity_san(name: str) -> x509.GeneralName:
    """The SAN of client certificates: ``urn:fedge:id:<name>`` (names may hold '_', so not a DNSName)."""
    return x509.UniformResourceIdentifier(f"urn:fedge:id:{name}")


def signing_key_extension(key: ed25519.Ed25519PublicKey) -> x509.UnrecognizedExtension:
    """The device signing-key extension (``<arc>.2``) carrying ``key`` as DER SubjectPublicKeyInfo."""
    return x509.UnrecognizedExtension(SIGNING_KEY_OID, spki_der(key))


def pop_message(name: str, tls_public_key: ec.EllipticCurvePublicKey) -> bytes:
    """What a device's signing key signs to prove it owns that key and binds it to this TLS key."""
    return _POP_CONTEXT + name.encode() + b"\x00" + spki_der(tls_public_key)


def pop_extension(signature: bytes) -> x509.UnrecognizedExtension:
    """The proof-of-possession CSR extension (``<arc>.3``): DER OCTET STRING of a 64-byte signature."""
    assert len(signature) == 64  # Ed25519; fits DER's one-byte short length form
    return x509.UnrecognizedExtension(SIGNING_POP_OID, b"\x04\x40" + signature)


def pop_signature(value: bytes) -> bytes | None:
    """The signature inside a proof-of-possession extension value, or None if malformed."""
    return value[2:] if len(value) == 66 and value[:2] == b"\x04\x40" else None


def ensure_private_dir(path: Path) -> None:
    """Create a directory only its owner can enter (it will hold the CA key).

    An existing directory keeps its mode (``--dir .`` must not lock the user out of their own
    directory); the key files in it are 0600 either way.
    """
    if not path.exists():
        path.mkdir(parents=True, mode=0o700)
        os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask
