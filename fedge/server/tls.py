"""mTLS for the server: credentials, who is calling, and whether they may.

Identity is the certificate subject that TLS verified, never a claim inside a message. The
Fleet/Control listener requires a client certificate from the fedge CA; revocation is checked
when a stream opens and re-checked whenever ``revoked.json`` changes, so revoking a device also
drops its live stream.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from fedge.errors import FedgeError
from fedge.security import RevocationList, is_admin


@dataclass(frozen=True)
class Peer:
    """A verified caller."""

    name: str
    cert_pem: bytes


def _read(path: Path, what: str) -> bytes:
    if not path.is_file():
        raise FedgeError(
            f"{what} not found: {path}", "create it with `fedge pki init` / `fedge pki issue-server`"
        )
    return path.read_bytes()


def server_credentials(pki_dir: Path, require_client_auth: bool = True) -> grpc.ServerCredentials:
    """TLS credentials from the PKI dir (``server.key``/``server.pem``, clients verified by ``ca.pem``)."""
    key = _read(pki_dir / "server.key", "server TLS key")
    cert = _read(pki_dir / "server.pem", "server certificate")
    ca = _read(pki_dir / "ca.pem", "CA certificate")
    return grpc.ssl_server_credentials(
        [(key, cert)],
        root_certificates=ca if require_client_auth else None,
        require_client_auth=require_client_auth,
    )


def peer_of(context: grpc.ServicerContext) -> Peer | None:
    """The TLS-verified client of this call (None on a plaintext listener)."""
    auth = context.auth_context()
    names, certs = auth.get("x509_common_name"), auth.get("x509_pem_cert")
    if not names or not certs:
        return None
    return Peer(names[0].decode(), certs[0])


class Gate:
    """Admission decisions for one server: revocation and the admin purpose."""

    def __init__(self, pki_dir: Path | None, audit: Callable[..., None] | None = None) -> None:
        self.enabled = pki_dir is not None
        self._audit = audit  # Control API denials are written here (AuditLog.write)
        self.revocations = RevocationList.load(pki_dir) if pki_dir is not None else None

    def revoked(self, peer: Peer) -> bool:
        """Is this peer's certificate revoked (re-reading the list if it changed)?"""
        if self.revocations is None:
            return False
        self.revocations.reload_if_changed()
        return self.revocations.is_revoked(peer.cert_pem)

    def admit_admin(self, context: grpc.ServicerContext) -> None:
        """Abort the call unless an unrevoked admin certificate made it (no-op in plaintext mode)."""
        if not self.enabled:
            return
        peer = peer_of(context)
        if peer is None or not is_admin(peer.cert_pem):
            self._denied(context, peer, "not an admin certificate")
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "the Control API needs an admin certificate")
        elif self.revoked(peer):
            self._denied(context, peer, "certificate revoked")
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"certificate of {peer.name!r} is revoked")

    def _denied(self, context: grpc.ServicerContext, peer: Peer | None, reason: str) -> None:
        if self._audit is not None:
            self._audit("control-denied", node=peer.name if peer else "", peer=context.peer(), reason=reason)
