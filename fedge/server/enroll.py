"""Enrollment service: a token and a CSR in, the device's certificate out.

The only service anyone can call without a certificate, so it answers as little as it can: a
refused token is described without the device it was for or when it was used (the audit log has
the whole reason), failures back off per source address and per device name
(:mod:`fedge.server.lockout`), and enrolling a name again revokes that name's earlier
certificates (audited as ``superseded``).
"""

from __future__ import annotations

from pathlib import Path

import grpc

from fedge.errors import FedgeError
from fedge.protos.v1 import enroll_pb2, enroll_pb2_grpc
from fedge.security import TokenRefused, enroll_device
from fedge.server.audit import AuditLog
from fedge.server.lockout import Lockout


def source_of(peer: str) -> str:
    """The address part of a gRPC peer (``ipv4:1.2.3.4:5678`` → ``ipv4:1.2.3.4``): ports change."""
    return peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else peer


class EnrollmentService(enroll_pb2_grpc.EnrollmentServicer):
    """Checks the one-time token, signs the CSR with the fedge CA, audits both outcomes."""

    def __init__(self, pki_dir: Path, audit: AuditLog, lockout: Lockout) -> None:
        self._pki_dir = pki_dir
        self._audit = audit
        self._lockout = lockout
        self._ca_pem = (pki_dir / "ca.pem").read_bytes()
        self._signing_pub = (pki_dir / "server-signing.pub").read_bytes()

    def Enroll(  # noqa: N802 (gRPC method name)
        self, request: enroll_pb2.EnrollRequest, context: grpc.ServicerContext
    ) -> enroll_pb2.EnrollResponse:
        peer = context.peer()
        keys = (f"source:{source_of(peer)}", f"name:{request.name[:128]}")
        wait = self._lockout.remaining(*keys)
        if wait > 0:
            self._audit.write("enroll-locked", node=request.name, peer=peer, retry_in=round(wait))
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many failed enrollments from this address or for this name; retry in {wait:.0f} s",
            )
        try:
            enrolled = enroll_device(self._pki_dir, request.token, request.csr_pem, request.name)
        except FedgeError as exc:
            self._lockout.failed(*keys)
            self._audit.write("enroll-refused", node=request.name, reason=exc.message, peer=peer)
            public = exc.public if isinstance(exc, TokenRefused) else exc.message
            context.abort(grpc.StatusCode.PERMISSION_DENIED, public[:300])
        self._lockout.succeeded(*keys)
        self._audit.write("enrolled", node=request.name, peer=peer)
        if enrolled.superseded:
            self._audit.write("superseded", node=request.name, revoked=enrolled.superseded, peer=peer)
        return enroll_pb2.EnrollResponse(
            cert_pem=enrolled.cert_pem, ca_pem=self._ca_pem, server_signing_pub=self._signing_pub
        )
