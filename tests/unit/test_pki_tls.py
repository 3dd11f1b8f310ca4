"""The PKI's certificate profile through a real gRPC (BoringSSL) mTLS handshake on 127.0.0.1.

What this pins down (see also the findings in the PKI issue note):

* with ``require_client_auth=True`` a device certificate from our CA connects and the servicer sees
  its CN in ``auth_context()["x509_common_name"]``; no certificate, a certificate from another CA,
  an expired one, or a server certificate used as a client one (no clientAuth EKU) fail the handshake
  and the client only sees UNAVAILABLE "Socket closed";
* with ``require_client_auth=False`` gRPC does not even *request* a client certificate, so there is
  no peer identity at all (even a valid device cert is not sent): fedge must always pass True;
* TLS knows nothing about revocation: a revoked device still completes the handshake, so the server
  checks :class:`RevocationList` on connect (shown here in the servicer);
* the client checks the server's SANs against the address it dialled.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from fedge.errors import FedgeError
from fedge.security import (
    Pki,
    RevocationList,
    build_csr,
    init_pki,
    issue_admin,
    issue_server,
    make_device_keys,
    revoke,
    sign_device_csr,
    verify_peer,
)

KeyCert = tuple[bytes, bytes]


class Fixture:
    """A PKI with a server cert for localhost/127.0.0.1 and client credentials of every kind."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pki: Pki = init_pki(root / "pki")
        server = issue_server(self.pki.root, "localhost", ["127.0.0.1"])
        self.server: KeyCert = (server.key_path.read_bytes(), server.cert_path.read_bytes())
        admin = issue_admin(self.pki.root)
        self.admin: KeyCert = (admin.key_path.read_bytes(), admin.cert_path.read_bytes())
        self.device = self.enroll(self.pki, "edge-001")
        self.expired = self.enroll(
            self.pki, "edge-old", days=1, now=dt.datetime.now(dt.UTC) - dt.timedelta(days=7)
        )
        self.foreign = self.enroll(init_pki(root / "other", ca_name="other CA"), "edge-001")

    def enroll(self, pki: Pki, name: str, **kw: Any) -> KeyCert:
        keys = make_device_keys(self.root / f"{pki.root.name}-{name}")
        return keys.tls_key_path.read_bytes(), sign_device_csr(pki.root, build_csr(keys, name), name, **kw)


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory) -> Fixture:
    return Fixture(tmp_path_factory.mktemp("tls"))


def _whoami_server(fx: Fixture, require_client_auth: bool) -> tuple[grpc.Server, int]:
    """A server whose one method returns the peer's CN, refusing revoked certificates first."""
    revocations = RevocationList.load(fx.pki.root)
    ca_pem = fx.pki.ca_pem()

    def whoami(request: bytes, context: grpc.ServicerContext) -> bytes:
        auth = context.auth_context()
        if "x509_pem_cert" in auth:  # the connect-time check the Fleet service does
            revocations.reload_if_changed()
            try:
                verify_peer(auth["x509_pem_cert"][0], ca_pem, revocations=revocations)
            except FedgeError as exc:
                context.abort(grpc.StatusCode.PERMISSION_DENIED, exc.message)
        return auth.get("x509_common_name", [b"<anonymous>"])[0]

    handler = grpc.method_handlers_generic_handler(
        "fedge.test.Who", {"WhoAmI": grpc.unary_unary_rpc_method_handler(whoami)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    creds = grpc.ssl_server_credentials(
        [fx.server], root_certificates=fx.pki.ca_pem(), require_client_auth=require_client_auth
    )
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    return server, port


@pytest.fixture(scope="module")
def mtls(fx: Fixture) -> Iterator[int]:
    server, port = _whoami_server(fx, require_client_auth=True)
    yield port
    server.stop(None)


def whoami(port: int, ca: bytes, client: KeyCert | None, target: str = "127.0.0.1", **opts: str) -> bytes:
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca,
        private_key=client[0] if client else None,
        certificate_chain=client[1] if client else None,
    )
    with grpc.secure_channel(f"{target}:{port}", creds, options=list(opts.items())) as channel:
        return channel.unary_unary("/fedge.test.Who/WhoAmI")(b"", timeout=10)


def handshake_fails(port: int, ca: bytes, client: KeyCert | None, **opts: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        whoami(port, ca, client, **opts)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    return err.value


def test_device_and_admin_certs_connect_and_the_servicer_sees_the_cn(fx: Fixture, mtls: int) -> None:
    assert whoami(mtls, fx.pki.ca_pem(), fx.device) == b"edge-001"
    assert whoami(mtls, fx.pki.ca_pem(), fx.admin) == b"admin"


def test_no_client_cert_is_refused(fx: Fixture, mtls: int) -> None:
    handshake_fails(mtls, fx.pki.ca_pem(), None)


def test_cert_from_another_ca_is_refused(fx: Fixture, mtls: int) -> None:
    handshake_fails(mtls, fx.pki.ca_pem(), fx.foreign)


def test_expired_client_cert_is_refused(fx: Fixture, mtls: int) -> None:
    err = handshake_fails(mtls, fx.pki.ca_pem(), fx.expired)
    assert "expired" not in (err.details() or "")  # type: ignore[attr-defined]  # the client is not told why
    with pytest.raises(FedgeError, match="certificate for 'edge-old' expired at"):  # so check before dialling
        verify_peer(fx.expired[1], fx.pki.ca_pem())


def test_server_cert_cannot_be_used_as_a_client_cert(fx: Fixture, mtls: int) -> None:
    handshake_fails(mtls, fx.pki.ca_pem(), fx.server)  # BoringSSL enforces the clientAuth EKU


def test_client_checks_the_server_name(fx: Fixture, mtls: int) -> None:
    assert whoami(mtls, fx.pki.ca_pem(), fx.device, target="localhost") == b"edge-001"
    err = handshake_fails(
        mtls, fx.pki.ca_pem(), fx.device, **{"grpc.ssl_target_name_override": "evil.example"}
    )
    assert "Hostname Verification Check failed" in (err.details() or "")  # type: ignore[attr-defined]


def test_server_from_another_ca_is_refused_by_the_client(fx: Fixture, mtls: int) -> None:
    other = init_pki(fx.root / "third")
    err = handshake_fails(mtls, other.ca_pem(), fx.device)
    assert "CERTIFICATE_VERIFY_FAILED" in (err.details() or "")  # type: ignore[attr-defined]


def test_revoked_cert_passes_tls_but_not_the_revocation_check(tmp_path: Path) -> None:
    fx = Fixture(tmp_path)
    server, port = _whoami_server(fx, require_client_auth=True)
    try:
        assert whoami(port, fx.pki.ca_pem(), fx.device) == b"edge-001"
        revoke(fx.pki.root, "edge-001")
        with pytest.raises(grpc.RpcError) as err:
            whoami(port, fx.pki.ca_pem(), fx.device)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
        assert "'edge-001' (serial" in err.value.details() and "was revoked at" in err.value.details()  # type: ignore[attr-defined]
        assert whoami(port, fx.pki.ca_pem(), fx.admin) == b"admin"
    finally:
        server.stop(None)


def test_without_require_client_auth_there_is_no_peer_identity(fx: Fixture) -> None:
    server, port = _whoami_server(fx, require_client_auth=False)
    try:
        assert whoami(port, fx.pki.ca_pem(), fx.device) == b"<anonymous>"  # not even requested
        assert whoami(port, fx.pki.ca_pem(), fx.foreign) == b"<anonymous>"  # so nothing is verified
        assert whoami(port, fx.pki.ca_pem(), None) == b"<anonymous>"
    finally:
        server.stop(None)
