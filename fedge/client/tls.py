"""mTLS on the device: enrollment, and the credentials the daemon connects with.

The device makes its own keys (they never leave it), sends a CSR with a one-time token over a
server-authenticated TLS channel, and installs the certificate the CA returns. Before every
start the daemon checks its certificate itself: a TLS handshake with an expired or foreign
certificate fails with nothing but "socket closed", so the clear message must come from here.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from fedge.atomic import write_bytes
from fedge.errors import FedgeError
from fedge.protos.v1 import enroll_pb2, enroll_pb2_grpc
from fedge.security import build_csr, install_device_cert, load_device_keys, make_device_keys, verify_peer

CERT, KEY, CA = "tls.pem", "tls.key", "ca.pem"


def is_enrolled(state_dir: str | Path) -> bool:
    """Does the state dir hold a certificate, its key and the CA?"""
    root = Path(state_dir)
    return all((root / n).is_file() for n in (CERT, KEY, CA))


def check_certificate(state_dir: str | Path) -> str:
    """The device's identity (certificate CN) — or a clear error if it is expired or not from the CA."""
    root = Path(state_dir)
    return verify_peer((root / CERT).read_bytes(), (root / CA).read_bytes())


def channel_credentials(state_dir: str | Path) -> grpc.ChannelCredentials:
    """Client-certificate credentials for the Fleet stream."""
    root = Path(state_dir)
    if not is_enrolled(root):
        raise FedgeError(
            f"this device is not enrolled ({root} has no certificate)",
            "run `fedge client enroll --server HOST:PORT --ca ca.pem --token T --name NAME`",
        )
    return grpc.ssl_channel_credentials(
        root_certificates=(root / CA).read_bytes(),
        private_key=(root / KEY).read_bytes(),
        certificate_chain=(root / CERT).read_bytes(),
    )


def tls_options(server_name: str) -> list[tuple[str, str]]:
    """Expect ``server_name`` in the server certificate when it differs from the dialed host."""
    return [("grpc.ssl_target_name_override", server_name)] if server_name else []


def enroll(
    server: str,
    ca_pem: bytes,
    token: str,
    name: str,
    state_dir: str | Path,
    server_name: str = "",
    timeout: float = 30.0,
) -> str:
    """Enroll this device: keys made here, CSR + token to the server, certificate installed."""
    root = Path(state_dir)
    keys = load_device_keys(root) if (root / KEY).exists() else make_device_keys(root)
    request = enroll_pb2.EnrollRequest(name=name, token=token, csr_pem=build_csr(keys, name))
    creds = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    with grpc.secure_channel(server, creds, options=tls_options(server_name)) as channel:
        try:
            reply = enroll_pb2_grpc.EnrollmentStub(channel).Enroll(request, timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            if code == grpc.StatusCode.PERMISSION_DENIED:
                raise FedgeError(
                    f"enrollment refused: {exc.details()}",
                    "ask the operator for a new token: `fedge pki token create --name NAME`",
                ) from None
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED:  # locked out after failed attempts
                raise FedgeError(
                    f"enrollment refused: {exc.details()}", "wait, then retry with the right token"
                ) from None
            raise FedgeError(
                f"cannot reach the enrollment service at {server}: {exc.details()}",
                "check --server (the server's --enroll-address) and --ca",
            ) from None
    identity = install_device_cert(keys, reply.cert_pem, reply.ca_pem)
    if reply.server_signing_pub:  # vouches for each run's aggregator key (sealed updates)
        write_bytes(root / "server-signing.pub", reply.server_signing_pub)
    return identity
