"""The relay role end to end on a real in-process mTLS server (tests/integration/test_mtls.py's).

Pinned down (docs/relay.md, "Who may relay"): only the operator grants the role (a ``--relay``
token); the certificate then carries the relay purpose, serverAuth and its name as a DNS name.
The server refuses both mismatches, audited: a device certificate that claims to relay, and a
relay certificate connecting as a device. Only a relay certificate gets a per-run key announced,
and only for a run that is running; the announcement is one every device verifies unchanged.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from fedge.client.tls import channel_credentials
from fedge.errors import FedgeError
from fedge.protos.v1 import relay_pb2, relay_pb2_grpc
from fedge.relay.keys import RunKeys
from fedge.security import Pki, is_relay
from fedge.security.seal import verify_announcement
from fedge.server.events import RunState
from fedge.server.relay_role import RELAY_CAPABILITY
from tests.conftest import fedge_cli
from tests.integration.test_mtls import TIMEOUT, Deployment, audited, dep, session_names

__all__ = ["dep"]  # the fixture, shared with test_mtls


def _refused(dep: Deployment, state: Path, name: str, relay_claim: bool) -> str:
    running = dep.start_daemon(state, name)
    if relay_claim:
        running.daemon.capabilities.append(RELAY_CAPABILITY)
    running.thread.join(TIMEOUT * 2)
    assert isinstance(running.error, FedgeError), running.error
    assert session_names(dep.server) == []
    return running.error.message


def test_only_a_relay_token_makes_a_relay_certificate(dep: Deployment) -> None:
    relay = x509.load_pem_x509_certificate((dep.enroll("relay-1", role="relay") / "tls.pem").read_bytes())
    device = x509.load_pem_x509_certificate((dep.enroll("edge-1") / "tls.pem").read_bytes())
    assert is_relay(relay) and not is_relay(device)
    usage = relay.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usage  # its devices connect to it
    assert "relay-1" in relay.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.DNSName)
    with pytest.raises(FedgeError, match="invalid host name"):
        dep.enroll("relay_2", role="relay")  # a relay's name is what its devices check: a host name


def test_a_device_certificate_that_claims_to_relay_is_refused(dep: Deployment) -> None:
    message = _refused(dep, dep.enroll("edge-1"), "edge-1", relay_claim=True)
    assert "a device certificate cannot relay" in message
    assert audited(dep.server, "refused", node="edge-1")


def test_a_relay_certificate_cannot_connect_as_a_device(dep: Deployment) -> None:
    message = _refused(dep, dep.enroll("relay-1", role="relay"), "relay-1", relay_claim=False)
    assert "a relay certificate cannot connect as a device" in message
    assert audited(dep.server, "refused", node="relay-1")


def test_relay_keys_are_announced_to_relays_for_running_runs_only(dep: Deployment) -> None:
    relay, device = dep.enroll("relay-1", role="relay"), dep.enroll("edge-1")
    run = dep.server.store.create_run("app:app", {}, ".", dep.root / "runs")
    request = relay_pb2.RelayKeyRequest(run_id=run.run_id, x25519_public=bytes(32))

    def announce(state: Path, req: relay_pb2.RelayKeyRequest) -> grpc.StatusCode:
        with grpc.secure_channel(dep.server.address, channel_credentials(state)) as channel:
            try:
                relay_pb2_grpc.RelayKeysStub(channel).Announce(req, timeout=TIMEOUT)
            except grpc.RpcError as exc:
                return exc.code()  # type: ignore[attr-defined, no-any-return]
        return grpc.StatusCode.OK

    assert announce(device, request) == grpc.StatusCode.PERMISSION_DENIED
    assert audited(dep.server, "relay-key-refused", node="edge-1", reason="not a relay certificate")
    unknown = relay_pb2.RelayKeyRequest(run_id=run.run_id + 1, x25519_public=bytes(32))
    assert announce(relay, unknown) == grpc.StatusCode.FAILED_PRECONDITION
    assert announce(relay, relay_pb2.RelayKeyRequest(run_id=run.run_id, x25519_public=b"short")) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )

    # The relay's own path: a fresh key, announced, checked against the pinned server key.
    def channel() -> grpc.Channel:
        return grpc.secure_channel(dep.server.address, channel_credentials(relay))

    opener = RunKeys(channel, relay).opener(run.run_id)
    verify_announcement(opener.announcement, Pki(dep.pki).signing_public_key(), run.run_id)
    assert audited(dep.server, "relay-key", node="relay-1", run_id=run.run_id)
    dep.server.store.set_state(run.run_id, RunState.FINISHED)
    with pytest.raises(FedgeError, match="did not announce"):
        RunKeys(channel, relay).opener(run.run_id)  # the run is over: no key for it any more


def test_fedge_relay_start_refuses_a_device_certificate(dep: Deployment) -> None:
    state = dep.enroll("edge-1")
    address = dep.server.address
    done = fedge_cli(
        "relay", "start", "--server", address, "--listen", "127.0.0.1:0", "--state-dir", str(state)
    )
    assert done.returncode == 2
    assert "error: the certificate in" in done.stderr and "has no relay role" in done.stderr
    assert "hint: enroll the relay with a token made by `fedge pki token create --relay" in done.stderr
    assert "Traceback" not in done.stderr
