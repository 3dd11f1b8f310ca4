"""mTLS end to end: a real in-process FedgeServer (Fleet/Control + enrollment listener) on 127.0.0.1.

Every certificate is made at test time with :mod:`fedge.security`; nothing here is mocked. What is
pinned down (docs/architecture.md, security layer 1):

* the Fleet listener refuses a caller with no client certificate, one from another CA and an expired
  one at the handshake; a revoked one gets PERMISSION_DENIED (audited ``refused``); a device that is
  already connected is dropped within seconds of ``revoke`` (audited ``revoked-drop``) and its daemon
  stops with a FedgeError instead of retrying;
* enrollment through the real listener installs the certificate and keeps the keys private, and
  refuses a reused or expired token with a message naming the cause (audited ``enroll-refused``);
* identity is the certificate subject, never the name claimed in Hello;
* the Control API needs the admin certificate.
"""

from __future__ import annotations

import datetime as dt
import json
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from fedge.client.daemon import EdgeDaemon
from fedge.client.runtime import load_client_app
from fedge.client.tls import check_certificate, enroll
from fedge.config import EdgeConfig, ServerConfig
from fedge.errors import FedgeError
from fedge.protos.v1 import control_pb2, control_pb2_grpc, fleet_pb2, fleet_pb2_grpc
from fedge.security import (
    build_csr,
    create_token,
    init_pki,
    install_device_cert,
    issue_admin,
    issue_server,
    make_device_keys,
    revoke,
    sign_device_csr,
)
from fedge.server.control_client import ControlClient
from fedge.server.service import FedgeServer

APP = load_client_app("tests.integration.edge_test_app:app")
TIMEOUT = 5.0  # generous bound for any single condition; passing runs take a fraction of it


# -- helpers --------------------------------------------------------------------------------------


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    """Poll ``predicate`` (state owned by other threads) until true; AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def audit(server: FedgeServer) -> list[dict[str, Any]]:
    path = server.state_dir / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def audited(server: FedgeServer, event: str, **fields: Any) -> list[dict[str, Any]]:
    """The audit lines of ``event`` whose fields include ``fields``."""
    return [e for e in audit(server) if e["event"] == event and fields.items() <= e.items()]


def session_names(server: FedgeServer) -> list[str]:
    return sorted(s.name for s in server.router.sessions())


class Running:
    """An EdgeDaemon on a background thread; its ``run_forever`` exception is kept in ``error``."""

    def __init__(self, daemon: EdgeDaemon) -> None:
        self.daemon = daemon
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name="test-edge-daemon")
        self.thread.start()

    def _run(self) -> None:
        try:
            self.daemon.run_forever()
        except BaseException as exc:  # handed to the test
            self.error = exc

    def stop(self, timeout: float = 10.0) -> None:
        self.daemon.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "daemon did not stop"


class Deployment:
    """A PKI (server cert for 127.0.0.1, admin cert) and a started mTLS FedgeServer with enrollment."""

    def __init__(self, root: Path) -> None:
        self.root = root
        # The CA predates every certificate of the tests (an expired device certificate included).
        self.pki = init_pki(root / "pki", now=dt.datetime.now(dt.UTC) - dt.timedelta(days=30)).root
        issue_server(self.pki, "localhost", ["127.0.0.1"])
        issue_admin(self.pki)
        cfg = ServerConfig(
            address="127.0.0.1:0",
            state_dir=str(root / "server"),
            pki_dir=str(self.pki),
            enroll_address="127.0.0.1:0",
        )
        self.server = FedgeServer(cfg)
        self.server.start()
        self.daemons: list[Running] = []

    @property
    def ca_pem(self) -> bytes:
        return (self.pki / "ca.pem").read_bytes()

    def enroll(self, name: str, **token_kw: Any) -> Path:
        """Enroll device ``name`` through the real enrollment listener; returns its state dir."""
        state_dir = self.root / "devices" / name
        token = create_token(self.pki, name, 600, **token_kw)
        assert enroll(self.server.enroll_address, self.ca_pem, token, name, state_dir, timeout=10) == name
        return state_dir

    def start_daemon(self, state_dir: Path, name: str) -> Running:
        cfg = EdgeConfig(
            server=self.server.address,
            name=name,
            state_dir=str(state_dir),
            backoff_initial=0.05,
            backoff_max=0.2,
        )
        running = Running(EdgeDaemon(cfg, APP, grace=1.0))  # type: ignore[arg-type]
        self.daemons.append(running)
        return running

    def close(self) -> None:
        for running in self.daemons:
            running.stop()
        self.server.stop(grace=0)


@pytest.fixture
def dep(tmp_path: Path) -> Iterator[Deployment]:
    deployment = Deployment(tmp_path)
    try:
        yield deployment
    finally:
        deployment.close()


def device_files(
    pki_dir: Path, name: str, state_dir: Path, now: dt.datetime | None = None, days: int = 365
) -> tuple[bytes, bytes]:
    """A device key and certificate signed directly by the CA in ``pki_dir`` (any CA, any time)."""
    keys = make_device_keys(state_dir)
    cert = sign_device_csr(pki_dir, build_csr(keys, name), name, days, now=now)
    install_device_cert(keys, cert, (pki_dir / "ca.pem").read_bytes(), now=now)
    return keys.tls_key_path.read_bytes(), cert


def fleet_connect(address: str, ca_pem: bytes, client: tuple[bytes, bytes] | None) -> grpc.RpcError:
    """Open a Fleet stream (Hello, then half-close) with these credentials; the error it ends with."""
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca_pem,
        private_key=client[0] if client else None,
        certificate_chain=client[1] if client else None,
    )
    hello = fleet_pb2.EdgeFrame(hello=fleet_pb2.Hello(name="intruder"))
    with grpc.secure_channel(address, creds) as channel:
        with pytest.raises(grpc.RpcError) as err:
            for _ in fleet_pb2_grpc.FleetStub(channel).Connect(iter([hello]), timeout=TIMEOUT):
                pass
    return err.value


def assert_handshake_refused(dep: Deployment, client: tuple[bytes, bytes] | None) -> None:
    error = fleet_connect(dep.server.address, dep.ca_pem, client)
    assert error.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]  # TLS said no
    assert session_names(dep.server) == []
    assert not audited(dep.server, "connect")  # never reached the servicer


# -- 1. refused ----------------------------------------------------------------------------------


def test_no_client_certificate_is_refused(dep: Deployment) -> None:
    assert_handshake_refused(dep, None)  # server-authenticated TLS with the right CA is not enough


def test_certificate_from_another_ca_is_refused(dep: Deployment) -> None:
    other = init_pki(dep.root / "other-pki", ca_name="other CA").root
    key, cert = device_files(other, "edge-foreign", dep.root / "foreign")
    assert_handshake_refused(dep, (key, cert))


def test_expired_certificate_is_refused_and_reported_before_connecting(dep: Deployment) -> None:
    state_dir = dep.root / "old"
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    key, cert = device_files(dep.pki, "edge-old", state_dir, now=long_ago, days=1)
    # The device's own check names the cause (the handshake below only says "socket closed").
    with pytest.raises(FedgeError, match=r"certificate for 'edge-old' expired at \d{4}-"):
        check_certificate(state_dir)
    assert_handshake_refused(dep, (key, cert))


def test_revoked_certificate_is_refused_and_audited(dep: Deployment) -> None:
    state_dir = dep.enroll("edge-r")
    creds = ((state_dir / "tls.key").read_bytes(), (state_dir / "tls.pem").read_bytes())
    assert revoke(dep.pki, "edge-r")
    error = fleet_connect(dep.server.address, dep.ca_pem, creds)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
    assert "'edge-r' is revoked" in (error.details() or "")  # type: ignore[attr-defined]
    assert audited(dep.server, "refused", node="edge-r", reason="certificate revoked")
    assert not audited(dep.server, "connect", node="edge-r")
    assert session_names(dep.server) == []


def test_connected_daemon_is_dropped_after_revoke(dep: Deployment) -> None:
    running = dep.start_daemon(dep.enroll("edge-live"), "edge-live")
    assert running.daemon.wait_connected(TIMEOUT)
    assert session_names(dep.server) == ["edge-live"]

    revoked_at = time.monotonic()
    assert revoke(dep.pki, "edge-live")
    wait_for(lambda: session_names(dep.server) == [], "the revoked device's stream to be dropped")
    assert time.monotonic() - revoked_at < 3.0  # the watcher re-reads revoked.json every second
    wait_for(lambda: bool(audited(dep.server, "revoked-drop", node="edge-live")), "revoked-drop audit")

    running.thread.join(TIMEOUT)  # a refusal is final: run_forever ends on its own, no retry loop
    assert not running.thread.is_alive(), "the daemon kept retrying with a revoked certificate"
    assert isinstance(running.error, FedgeError), running.error
    assert "the server refused this device" in str(running.error) and "revoked" in str(running.error)
    assert audited(dep.server, "disconnect", node="edge-live", reason="certificate revoked")


def test_revoked_daemon_is_dropped_even_if_a_control_call_comes_first(dep: Deployment) -> None:
    running = dep.start_daemon(dep.enroll("edge-race"), "edge-race")
    assert running.daemon.wait_connected(TIMEOUT)
    admin = ControlClient(dep.server.address, admin_dir=dep.pki)
    try:
        assert revoke(dep.pki, "edge-race")
        admin.list_nodes()  # an ordinary admin call right after the revocation
    finally:
        admin.close()
    wait_for(lambda: session_names(dep.server) == [], "the revoked device's stream to be dropped", 3.0)
    assert audited(dep.server, "revoked-drop", node="edge-race")


# -- 2. enrollment ------------------------------------------------------------------------------


def test_enrollment_installs_certificate_and_keeps_keys_private(dep: Deployment) -> None:
    state_dir = dep.enroll("edge-new")
    assert (state_dir / "ca.pem").read_bytes() == dep.ca_pem
    assert check_certificate(state_dir) == "edge-new"
    for key in ("tls.key", "signing.key"):
        assert stat.S_IMODE((state_dir / key).stat().st_mode) == 0o600, key
    assert audited(dep.server, "enrolled", node="edge-new")


def test_reused_and_expired_tokens_are_refused_and_audited(dep: Deployment) -> None:
    address, ca = dep.server.enroll_address, dep.ca_pem
    token = create_token(dep.pki, "edge-t", 600)
    assert enroll(address, ca, token, "edge-t", dep.root / "t1", timeout=10) == "edge-t"
    with pytest.raises(FedgeError, match=r"enrollment refused: enrollment token already used \(hint"):
        enroll(address, ca, token, "edge-t", dep.root / "t2", timeout=10)

    an_hour_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    stale = create_token(dep.pki, "edge-x", 1, now=an_hour_ago)
    with pytest.raises(FedgeError, match=r"enrollment refused: enrollment token expired \(hint"):
        enroll(address, ca, stale, "edge-x", dep.root / "x", timeout=10)
    assert not (dep.root / "t2" / "tls.pem").exists() and not (dep.root / "x" / "tls.pem").exists()

    refused = audited(dep.server, "enroll-refused")
    assert [(e["node"], "already used" in e["reason"], "expired" in e["reason"]) for e in refused] == [
        ("edge-t", True, False),
        ("edge-x", False, True),
    ]


# -- 3. identity ---------------------------------------------------------------------------------


def test_identity_is_the_certificate_subject_not_the_hello_name(dep: Deployment) -> None:
    running = dep.start_daemon(dep.enroll("edge-a"), name="edge-b")  # Hello(name="edge-b")
    assert running.daemon.wait_connected(TIMEOUT)
    assert session_names(dep.server) == ["edge-a"]
    assert [n.name for n in dep.server.store.nodes()] == ["edge-a"]
    assert audited(dep.server, "connect", node="edge-a") and not audited(dep.server, "connect", node="edge-b")
    client = ControlClient(dep.server.address, admin_dir=dep.pki)
    try:
        assert [(n.name, n.online) for n in client.list_nodes()] == [("edge-a", True)]
    finally:
        client.close()


# -- 4. Control needs the admin certificate -----------------------------------------------------


def test_control_requires_the_admin_certificate(dep: Deployment) -> None:
    state_dir = dep.enroll("edge-c")
    creds = grpc.ssl_channel_credentials(
        root_certificates=dep.ca_pem,
        private_key=(state_dir / "tls.key").read_bytes(),
        certificate_chain=(state_dir / "tls.pem").read_bytes(),
    )
    with grpc.secure_channel(dep.server.address, creds) as channel:
        with pytest.raises(grpc.RpcError) as err:
            control_pb2_grpc.ControlStub(channel).ListNodes(control_pb2.ListNodesRequest(), timeout=TIMEOUT)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
    assert "admin certificate" in (err.value.details() or "")  # type: ignore[attr-defined]

    admin = ControlClient(dep.server.address, admin_dir=dep.pki)
    try:
        assert admin.list_nodes() == []  # edge-c enrolled but never connected
        assert admin.list_runs() == []
    finally:
        admin.close()
