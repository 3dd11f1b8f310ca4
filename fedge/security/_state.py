"""The PKI directory (private): its layout (:class:`Pki`), locking, and the JSON state files.

``tokens.json``, ``issued.json`` and ``revoked.json`` are rewritten whole, atomically (temp file +
rename, :mod:`fedge.atomic`), so a reader never sees a torn file. Writers serialize on a lock that is
both a per-directory ``threading.Lock`` (threads of one server) and an ``flock`` on ``<dir>/.lock``
(the ``fedge pki`` CLI creating a token while the server consumes one must not lose either update).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from fedge.atomic import write_bytes
from fedge.errors import FedgeError
from fedge.security._x509 import (
    ADMIN_PURPOSE_OID,
    common_name,
    ekus,
    fingerprint,
    load_cert_file,
    load_signing_key,
    load_tls_key,
    serial_hex,
)

try:  # POSIX; elsewhere the in-process lock is all there is
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

_LOCKS: dict[Path, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    """Hold the PKI directory's write lock (threads of this process and other processes)."""
    key = root.resolve()
    with _LOCKS_GUARD:
        lock = _LOCKS.setdefault(key, threading.Lock())
    with lock:
        if fcntl is None:  # pragma: no cover
            yield
            return
        fd = os.open(key / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock


def read_json(path: Path) -> dict[str, Any]:
    """A state file's content; ``{}`` if it does not exist yet."""
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise FedgeError(f"cannot read {path}: {exc}", "restore the file from backup") from None
    if not isinstance(data, dict):
        raise FedgeError(f"{path} is not a fedge state file", "restore the file from backup")
    return data


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Replace a state file atomically (0600: token hashes and the fleet roster are not public)."""
    write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode(), 0o600)


def iso(when: dt.datetime) -> str:
    """A timestamp as stored in state files: ISO 8601, UTC, seconds."""
    return when.astimezone(dt.UTC).isoformat(timespec="seconds")


def parse_iso(text: str) -> dt.datetime:
    """Inverse of :func:`iso`."""
    return dt.datetime.fromisoformat(text).astimezone(dt.UTC)


@dataclasses.dataclass(frozen=True)
class Pki:
    """An initialized PKI directory; paths and loaders for what the server needs from it."""

    root: Path

    @classmethod
    def open(cls, pki_dir: str | os.PathLike[str]) -> Pki:
        """The PKI in ``pki_dir``; FedgeError if none was initialized there."""
        pki = cls(Path(pki_dir))
        if not (pki.ca_cert_path.exists() and (pki.root / "ca.key").exists()):
            raise FedgeError(
                f"no fedge PKI in {pki.root}", f"create one with `fedge pki init --dir {pki_dir}`"
            )
        return pki

    @property
    def ca_cert_path(self) -> Path:
        """CA certificate: every peer trusts it (gRPC ``root_certificates``)."""
        return self.root / "ca.pem"

    @property
    def server_cert_path(self) -> Path:
        """Server TLS certificate."""
        return self.root / "server.pem"

    @property
    def server_key_path(self) -> Path:
        """Server TLS private key."""
        return self.root / "server.key"

    def ca_pem(self) -> bytes:
        """The CA certificate, PEM (``root_certificates`` for gRPC on both sides)."""
        return self.ca_cert_path.read_bytes()

    def signing_key(self) -> ed25519.Ed25519PrivateKey:
        """The server's Ed25519 signing key (run announcements, model bundles)."""
        return load_signing_key(self.root / "server-signing.key")

    def signing_public_key(self) -> ed25519.Ed25519PublicKey:
        """Its public half, as devices pin it."""
        return self.signing_key().public_key()

    def _ca(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = load_tls_key(self.root / "ca.key")
        return load_cert_file(self.ca_cert_path), key


def check_kind(root: Path, name: str, kind: str) -> None:
    """One name, one kind: a device must not share its identity with an admin or the server."""
    for c in read_json(root / "issued.json").get("certs", []):
        if c["name"] == name and c["kind"] != kind:
            raise FedgeError(
                f"{name!r} already names a {c['kind']} certificate, cannot issue a {kind} one",
                "pick another name (identities are certificate names, so they must be unique)",
            )


def record_issued(root: Path, cert: x509.Certificate, kind: str) -> None:
    """Append to ``issued.json`` (caller holds the lock)."""
    data = read_json(root / "issued.json")
    data.setdefault("certs", []).append(
        {
            "serial": serial_hex(cert.serial_number),
            "name": common_name(cert),
            "kind": kind,
            "admin": ADMIN_PURPOSE_OID in ekus(cert),
            "not_before": iso(cert.not_valid_before_utc),
            "not_after": iso(cert.not_valid_after_utc),
            "sha256": fingerprint(cert),
        }
    )
    data["version"] = 1
    write_json(root / "issued.json", data)
