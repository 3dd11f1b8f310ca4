"""The device side of enrollment (private; re-exported by :mod:`fedge.security.pki`).

A device creates its two private keys itself and never sends them: an ECDSA P-256 key for mTLS and an
Ed25519 key for signing its updates. It sends a CSR (signed by the TLS key) that carries the Ed25519
public key plus a proof that it holds the matching private key, and gets back a certificate binding
both public keys to its name.

Files in the device's state directory::

    tls.key       ECDSA P-256 private key (0600)      tls.pem   certificate issued by the CA
    signing.key   Ed25519 private key (0600)          ca.pem    the CA it was issued by
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from fedge.atomic import write_bytes
from fedge.errors import FedgeError
from fedge.security._verify import device_signing_key, signing_key_in, verify_peer
from fedge.security._x509 import (
    SIGNING_POP_OID,
    as_cert,
    cert_pem,
    check_name,
    common_name,
    load_signing_key,
    load_tls_key,
    new_signing_key,
    new_tls_key,
    pop_extension,
    pop_message,
    pop_signature,
    signing_key_extension,
    spki_der,
    write_private_key,
)

TLS_KEY, SIGNING_KEY, TLS_CERT, CA_CERT = "tls.key", "signing.key", "tls.pem", "ca.pem"


@dataclasses.dataclass(frozen=True)
class DeviceKeys:
    """A device's private keys and where they live.

    Attributes
    ----------
    state_dir
        The device's state directory.
    tls_key
        ECDSA P-256 key of its mTLS certificate.
    signing_key
        Ed25519 key that signs its sealed updates (docs/architecture.md, security layer 2).
    """

    state_dir: Path
    tls_key: ec.EllipticCurvePrivateKey
    signing_key: ed25519.Ed25519PrivateKey

    @property
    def cert_path(self) -> Path:
        """Where the issued certificate is installed (:func:`install_device_cert`)."""
        return self.state_dir / TLS_CERT

    @property
    def ca_path(self) -> Path:
        """Where the CA certificate is installed."""
        return self.state_dir / CA_CERT

    @property
    def tls_key_path(self) -> Path:
        """The TLS private key file (for ``grpc.ssl_channel_credentials``)."""
        return self.state_dir / TLS_KEY


def make_device_keys(state_dir: str | os.PathLike[str]) -> DeviceKeys:
    """Generate the device's TLS and signing keys in ``state_dir`` (0600); refuses to replace keys."""
    root = Path(state_dir)
    existing = [n for n in (TLS_KEY, SIGNING_KEY) if (root / n).exists()]
    if existing:
        raise FedgeError(
            f"device keys already exist in {root} ({', '.join(existing)})",
            "load them with load_device_keys(); delete them only to re-key (the device must re-enroll)",
        )
    root.mkdir(parents=True, exist_ok=True)
    keys = DeviceKeys(root, new_tls_key(), new_signing_key())
    write_private_key(root / SIGNING_KEY, keys.signing_key)
    write_private_key(root / TLS_KEY, keys.tls_key)
    return keys


def load_device_keys(state_dir: str | os.PathLike[str]) -> DeviceKeys:
    """The keys :func:`make_device_keys` created earlier in ``state_dir``."""
    root = Path(state_dir)
    return DeviceKeys(
        root,
        load_tls_key(root / TLS_KEY),
        load_signing_key(root / SIGNING_KEY),
    )


def build_csr(keys: DeviceKeys, name: str) -> bytes:
    """A PEM CSR for ``name``: CN=name, signed by the TLS key, carrying the signing key and its proof."""
    check_name(name, "device name")
    proof = keys.signing_key.sign(pop_message(name, keys.tls_key.public_key()))
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .add_extension(signing_key_extension(keys.signing_key.public_key()), critical=False)
        .add_extension(pop_extension(proof), critical=False)
        .sign(keys.tls_key, hashes.SHA256())
    )
    return csr.public_bytes(encoding=Encoding.PEM)


def install_device_cert(
    keys: DeviceKeys, cert_pem_data: bytes, ca_pem: bytes, *, now: dt.datetime | None = None
) -> str:
    """Check the certificate the CA returned and store it with the CA; returns the identity (CN).

    Refuses a certificate that is not for these keys, does not carry this signing key, or does not
    verify against ``ca_pem`` — better to fail at enrollment than at the first TLS handshake.
    """
    cert = as_cert(cert_pem_data)
    name = verify_peer(cert_pem_data, ca_pem, now)
    if spki_der(cert.public_key()) != spki_der(keys.tls_key.public_key()):  # type: ignore[arg-type]
        raise FedgeError(
            f"the certificate for {name!r} is for another TLS key than {keys.tls_key_path}",
            "enroll again with a CSR built from this device's keys",
        )
    if spki_der(device_signing_key(cert)) != spki_der(keys.signing_key.public_key()):
        raise FedgeError(f"the certificate for {name!r} carries another signing key", "enroll again")
    write_bytes(keys.ca_path, as_cert(ca_pem).public_bytes(Encoding.PEM))
    write_bytes(keys.cert_path, cert_pem(cert))
    return name


def check_csr(csr_pem: bytes, name: str) -> tuple[x509.CertificateSigningRequest, ed25519.Ed25519PublicKey]:
    """The CA side of :func:`build_csr`: parse and check a CSR; returns it with its signing key."""
    check_name(name, "device name")
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError:
        raise FedgeError("not a PEM certificate signing request", "send the output of build_csr()") from None
    if not csr.is_signature_valid:
        raise FedgeError(f"the CSR for {name!r} has an invalid signature", "rebuild it with build_csr()")
    if common_name(csr) != name:
        raise FedgeError(
            f"the CSR is for {common_name(csr)!r}, not {name!r}", "build the CSR with the device's name"
        )
    tls_key = csr.public_key()
    if not (isinstance(tls_key, ec.EllipticCurvePublicKey) and isinstance(tls_key.curve, ec.SECP256R1)):
        raise FedgeError(
            f"the CSR for {name!r} is not for an ECDSA P-256 key", "make keys with make_device_keys()"
        )
    try:
        signing = signing_key_in(csr.extensions, f"the CSR for {name!r}")
        pop = csr.extensions.get_extension_for_oid(SIGNING_POP_OID).value
        proof = pop_signature(pop.value)  # type: ignore[attr-defined]
        if proof is None:
            raise InvalidSignature
        signing.verify(proof, pop_message(name, tls_key))
    except (FedgeError, x509.ExtensionNotFound, InvalidSignature):
        raise FedgeError(
            f"the CSR for {name!r} lacks a valid device signing key with proof of possession",
            "build it with fedge's build_csr() (fedge client enrollment does)",
        ) from None
    return csr, signing
