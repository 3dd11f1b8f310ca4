"""Enrollment service: a token and a CSR in, the device's certificate out."""

from __future__ import annotations

from pathlib import Path

import grpc

from fedge.errors import FedgeError
from fedge.protos.v1 import enroll_pb2, enroll_pb2_grpc
from fedge.security import enroll_device
from fedge.server.audit import AuditLog


class EnrollmentService(enroll_pb2_grpc.EnrollmentServicer):
    """Checks the one-time token, signs the CSR with the fedge CA, audits both outcomes."""

    def __init__(self, pki_dir: Path, audit: AuditLog) -> None:
        self._pki_dir = pki_dir
        self._audit = audit
        self._ca_pem = (pki_dir / "ca.pem").read_bytes()
        self._signing_pub = (pki_dir / "server-signing.pub").read_bytes()

    def Enroll(  # noqa: N802 (gRPC method name)
        self, request: enroll_pb2.EnrollRequest, context: grpc.ServicerContext
    ) -> enroll_pb2.EnrollResponse:
        try:
            cert = enroll_device(self._pki_dir, request.token, request.csr_pem, request.name)
        except FedgeError as exc:
            self._audit.write(
                "enroll-refused", node=request.name[:128], reason=exc.message, peer=context.peer()
            )
            context.abort(grpc.StatusCode.PERMISSION_DENIED, exc.message)
        self._audit.write("enrolled", node=request.name, peer=context.peer())
        return enroll_pb2.EnrollResponse(
            cert_pem=cert, ca_pem=self._ca_pem, server_signing_pub=self._signing_pub
        )
