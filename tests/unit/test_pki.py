"""The file-based PKI: real keys and certificates in temp dirs, no mocks."""

from __future__ import annotations

import datetime as dt
import json
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from fedge.errors import FedgeError
from fedge.security import (
    Pki,
    RevocationList,
    build_csr,
    consume_token,
    create_token,
    device_signing_key,
    enroll_device,
    init_pki,
    install_device_cert,
    is_admin,
    issue_admin,
    issue_server,
    list_issued,
    load_device_keys,
    make_device_keys,
    revoke,
    sign_device_csr,
    verify_peer,
)

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return init_pki(tmp_path / "pki", now=NOW)


def enroll(pki: Pki, tmp_path: Path, name: str, **kw: object) -> bytes:
    keys = make_device_keys(tmp_path / f"dev-{name}")
    return sign_device_csr(pki.root, build_csr(keys, name), name, now=kw.pop("now", NOW), **kw)  # type: ignore[arg-type]


def test_init_writes_ca_and_signing_key_with_private_modes(pki: Pki) -> None:
    root = pki.root
    assert mode(root) == 0o700
    for key in ("ca.key", "server-signing.key"):
        assert mode(root / key) == 0o600
    ca = x509.load_pem_x509_certificate(pki.ca_pem())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "fedge CA"
    sig = pki.signing_key().sign(b"announcement")
    pki.signing_public_key().verify(sig, b"announcement")  # raises if the pair does not match
    assert (root / "server-signing.pub").read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")


def test_init_refuses_to_overwrite(pki: Pki) -> None:
    before = pki.ca_pem()
    with pytest.raises(FedgeError, match="already exists") as err:
        init_pki(pki.root)
    assert "another --dir" in err.value.hint
    assert pki.ca_pem() == before


def test_commands_need_an_initialized_pki(tmp_path: Path) -> None:
    with pytest.raises(FedgeError, match="no fedge PKI") as err:
        issue_server(tmp_path / "nothing", "localhost")
    assert "fedge pki init" in err.value.hint


def test_server_cert_has_requested_sans_and_verifies(pki: Pki) -> None:
    issued = issue_server(pki.root, "fedge.example.com", ["127.0.0.1", "10.0.0.5", "::1"], now=NOW)
    assert mode(issued.key_path) == 0o600 and issued.cert_path == pki.server_cert_path
    sans = issued.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["fedge.example.com"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "10.0.0.5", "::1"]
    pem = issued.cert_path.read_bytes()
    assert verify_peer(pem, pki.ca_pem(), NOW, usage="server") == "fedge.example.com"
    with pytest.raises(FedgeError, match="not a TLS client certificate .*serverAuth"):
        verify_peer(pem, pki.ca_pem(), NOW)  # a server certificate cannot authenticate a client
    with pytest.raises(FedgeError, match="already exists") as err:
        issue_server(pki.root, "fedge.example.com")
    assert "--force" in err.value.hint


def test_server_host_may_be_an_ip_and_bad_addresses_are_errors(pki: Pki) -> None:
    cert = issue_server(pki.root, "192.168.1.10", now=NOW).cert
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["192.168.1.10"]
    with pytest.raises(FedgeError, match="invalid IP address"):
        issue_server(pki.root, "h", ["300.1.1.1"], force=True)
    with pytest.raises(FedgeError, match="invalid host name"):
        issue_server(pki.root, "bad host!", force=True)


def test_admin_marker(pki: Pki, tmp_path: Path) -> None:
    admin = issue_admin(pki.root, now=NOW)
    assert admin.cert_path.name == "admin.pem" and mode(admin.key_path) == 0o600
    assert is_admin(admin.cert) and is_admin(admin.cert_path.read_bytes())
    assert verify_peer(admin.cert_path.read_bytes(), pki.ca_pem(), NOW) == "admin"
    device = enroll(pki, tmp_path, "edge-001")
    assert not is_admin(device)
    assert not is_admin(issue_server(pki.root, "localhost", now=NOW).cert)
    with pytest.raises(FedgeError, match="already names a device certificate"):
        issue_admin(pki.root, "edge-001")  # one name, one kind
    with pytest.raises(FedgeError, match="reserved"):
        issue_admin(pki.root, "ca")


def test_csr_round_trip_carries_the_signing_key(pki: Pki, tmp_path: Path) -> None:
    keys = make_device_keys(tmp_path / "edge")
    assert mode(tmp_path / "edge" / "tls.key") == mode(tmp_path / "edge" / "signing.key") == 0o600
    csr = build_csr(keys, "edge-001")
    assert x509.load_pem_x509_csr(csr).is_signature_valid
    cert_pem = sign_device_csr(pki.root, csr, "edge-001", now=NOW)
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert verify_peer(cert_pem, pki.ca_pem(), NOW) == "edge-001"
    assert cert.public_key() == keys.tls_key.public_key()
    update = b"sealed update bytes"
    device_signing_key(cert_pem).verify(keys.signing_key.sign(update), update)
    issued = json.loads((pki.root / "issued.json").read_text())["certs"]
    assert {
        "name": "edge-001",
        "kind": "device",
        "serial": format(cert.serial_number, "x"),
    }.items() <= issued[-1].items()
    again = load_device_keys(tmp_path / "edge")
    assert install_device_cert(again, cert_pem, pki.ca_pem(), now=NOW) == "edge-001"
    assert keys.cert_path.read_bytes() == cert_pem and keys.ca_path.read_bytes() == pki.ca_pem()
    with pytest.raises(FedgeError, match="already exist"):
        make_device_keys(tmp_path / "edge")


def test_bad_csrs_are_refused(pki: Pki, tmp_path: Path) -> None:
    a, b = make_device_keys(tmp_path / "a"), make_device_keys(tmp_path / "b")
    with pytest.raises(FedgeError, match="the CSR is for 'edge-a', not 'edge-b'"):
        sign_device_csr(pki.root, build_csr(a, "edge-a"), "edge-b")
    with pytest.raises(FedgeError, match="not a PEM certificate signing request"):
        sign_device_csr(pki.root, b"garbage", "edge-a")
    # a CSR whose signing key is not backed by a proof of possession (plain CSR, no fedge extensions)
    plain = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge-a")]))
        .sign(a.tls_key, hashes.SHA256())
        .public_bytes(Encoding.PEM)
    )
    with pytest.raises(FedgeError, match="lacks a valid device signing key"):
        sign_device_csr(pki.root, plain, "edge-a")
    # a device claiming another device's signing key: b's CSR extensions, a's TLS key
    csr_b = x509.load_pem_x509_csr(build_csr(b, "edge-a"))
    forged = x509.CertificateSigningRequestBuilder().subject_name(csr_b.subject)
    for ext in csr_b.extensions:
        forged = forged.add_extension(ext.value, critical=False)
    forged_pem = forged.sign(a.tls_key, hashes.SHA256()).public_bytes(Encoding.PEM)
    with pytest.raises(FedgeError, match="proof of possession"):
        sign_device_csr(pki.root, forged_pem, "edge-a")


def test_install_refuses_a_cert_for_other_keys(pki: Pki, tmp_path: Path) -> None:
    mine, other = make_device_keys(tmp_path / "mine"), make_device_keys(tmp_path / "other")
    cert = sign_device_csr(pki.root, build_csr(other, "edge-1"), "edge-1", now=NOW)
    with pytest.raises(FedgeError, match="another TLS key"):
        install_device_cert(mine, cert, pki.ca_pem(), now=NOW)
    assert not mine.cert_path.exists()


def test_cert_from_another_ca_is_rejected(pki: Pki, tmp_path: Path) -> None:
    other = init_pki(tmp_path / "other", ca_name="evil CA", now=NOW)
    foreign = enroll(other, tmp_path, "edge-1")
    with pytest.raises(FedgeError, match="'edge-1' was not issued by this fedge CA .*CN=evil CA"):
        verify_peer(foreign, pki.ca_pem(), NOW)


def test_expired_and_future_certs_are_rejected(pki: Pki, tmp_path: Path) -> None:
    old = enroll(pki, tmp_path, "edge-old", days=1, now=NOW - dt.timedelta(days=10))
    with pytest.raises(FedgeError, match=r"certificate for 'edge-old' expired at 2029-12-23T00:00:00\+00:00"):
        verify_peer(old, pki.ca_pem(), NOW)
    fresh = enroll(pki, tmp_path, "edge-new", days=30)
    with pytest.raises(FedgeError, match="expired at"):
        verify_peer(fresh, pki.ca_pem(), NOW + dt.timedelta(days=31))
    future = enroll(pki, tmp_path, "edge-future", now=NOW + dt.timedelta(days=2))
    with pytest.raises(FedgeError, match="'edge-future' is not valid before 2030-01-02T23:55") as err:
        verify_peer(future, pki.ca_pem(), NOW)
    assert "clock" in err.value.hint


def test_ca_outside_its_validity_is_named(pki: Pki, tmp_path: Path) -> None:
    cert = enroll(pki, tmp_path, "edge-1")
    with pytest.raises(FedgeError, match="the fedge CA certificate .* is valid only from"):
        verify_peer(cert, pki.ca_pem(), NOW - dt.timedelta(days=1))


def test_leaf_validity_never_exceeds_the_ca(tmp_path: Path) -> None:
    short = init_pki(tmp_path / "short", days=10, now=NOW)
    cert = x509.load_pem_x509_certificate(enroll(short, tmp_path, "edge-1", days=365))
    assert cert.not_valid_after_utc == x509.load_pem_x509_certificate(short.ca_pem()).not_valid_after_utc


def test_revocation(pki: Pki, tmp_path: Path) -> None:
    first, second = enroll(pki, tmp_path, "edge-1"), enroll(pki, tmp_path / "again", "edge-1")
    keep = enroll(pki, tmp_path, "edge-2")
    pending = create_token(pki.root, "edge-1", 3600, now=NOW)
    rl = RevocationList.load(pki.root)
    assert len(rl) == 0 and not rl.is_revoked(first)
    assert rl.reload_if_changed() is False
    unchanged = rl.generation
    assert len(revoke(pki.root, "edge-1", now=NOW)) == 2
    assert mode(pki.root / "revoked.json") == 0o600
    assert rl.reload_if_changed() is True and rl.reload_if_changed() is False
    assert rl.generation == unchanged + 1  # what the server's watcher re-checks live streams on
    assert rl.is_revoked(first) and rl.is_revoked(second) and not rl.is_revoked(keep)
    with pytest.raises(FedgeError, match="'edge-1' .* was revoked at 2030-01-01") as err:
        verify_peer(first, pki.ca_pem(), NOW, revocations=rl)
    assert "re-enroll" in err.value.hint
    assert verify_peer(keep, pki.ca_pem(), NOW, revocations=rl) == "edge-2"
    with pytest.raises(FedgeError, match="invalidated .* when 'edge-1' was revoked"):
        consume_token(pki.root, pending, "edge-1", now=NOW)
    assert revoke(pki.root, "edge-1") == []  # idempotent
    with pytest.raises(FedgeError, match="no certificate was issued to 'ghost'"):
        revoke(pki.root, "ghost")
    states = {(c.name, c.state) for c in list_issued(pki.root, now=NOW)}
    assert states == {("fedge CA", "valid"), ("edge-1", "revoked"), ("edge-2", "valid")}
    later = {c.name: c.state for c in list_issued(pki.root, now=NOW + dt.timedelta(days=400))}
    assert later == {"fedge CA": "valid", "edge-1": "revoked", "edge-2": "expired"}


def test_device_signing_key_absent_is_an_error(pki: Pki) -> None:
    admin = issue_admin(pki.root, now=NOW)
    with pytest.raises(FedgeError, match="'admin' carries no device signing key"):
        device_signing_key(admin.cert)


def test_tokens_are_random_hashed_and_single_use(pki: Pki, tmp_path: Path) -> None:
    token = create_token(pki.root, "edge-001", 3600, now=NOW)
    assert len(token) >= 43 and all(c.isalnum() or c in "-_" for c in token)  # 256 bits, URL-safe
    assert token != create_token(pki.root, "edge-001", 3600, now=NOW)
    stored = (pki.root / "tokens.json").read_text()
    assert token not in stored and mode(pki.root / "tokens.json") == 0o600
    consume_token(pki.root, token, "edge-001", now=NOW)
    with pytest.raises(FedgeError, match="already used at 2030-01-01") as err:
        consume_token(pki.root, token, "edge-001", now=NOW)
    assert "single-use" in err.value.hint


def test_token_expiry_wrong_name_and_unknown(pki: Pki) -> None:
    token = create_token(pki.root, "edge-001", 60, now=NOW)
    with pytest.raises(FedgeError, match="created for 'edge-001', not 'edge-002'"):
        consume_token(pki.root, token, "edge-002", now=NOW)
    with pytest.raises(FedgeError, match=r"expired at 2030-01-01T00:01:00\+00:00"):
        consume_token(pki.root, token, "edge-001", now=NOW + dt.timedelta(seconds=61))
    consume_token(
        pki.root, token, "edge-001", now=NOW + dt.timedelta(seconds=59)
    )  # the wrong name did not burn it
    with pytest.raises(FedgeError, match="unknown enrollment token"):
        consume_token(pki.root, "not-a-token", "edge-001", now=NOW)
    with pytest.raises(FedgeError, match="lifetime must be positive"):
        create_token(pki.root, "edge-001", 0)
    with pytest.raises(FedgeError, match="invalid device name"):
        create_token(pki.root, "bad name", 60)


def test_tokens_are_consumed_once_under_concurrency(pki: Pki) -> None:
    token = create_token(pki.root, "edge-001", 3600)
    wins: list[int] = []
    errors: list[str] = []
    barrier = threading.Barrier(8)

    def attempt(i: int) -> None:
        barrier.wait(timeout=10)
        try:
            consume_token(pki.root, token, "edge-001")
            wins.append(i)
        except FedgeError as exc:
            errors.append(exc.message)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert len(wins) == 1 and len(errors) == 7 and all("already used" in e for e in errors)


def test_enroll_device_checks_the_csr_before_spending_the_token(pki: Pki, tmp_path: Path) -> None:
    keys = make_device_keys(tmp_path / "edge")
    token = create_token(pki.root, "edge-001", 3600, now=NOW)
    with pytest.raises(FedgeError, match="the CSR is for"):
        enroll_device(pki.root, token, build_csr(keys, "edge-009"), "edge-001", now=NOW)
    enrolled = enroll_device(pki.root, token, build_csr(keys, "edge-001"), "edge-001", now=NOW)
    assert install_device_cert(keys, enrolled.cert_pem, pki.ca_pem(), now=NOW) == "edge-001"
    assert enrolled.superseded == []
    with pytest.raises(FedgeError, match="already used"):
        enroll_device(pki.root, token, build_csr(keys, "edge-001"), "edge-001", now=NOW)


def test_enrolling_a_name_again_revokes_its_earlier_certificates(pki: Pki, tmp_path: Path) -> None:
    certs = []
    for attempt in range(2):
        keys = make_device_keys(tmp_path / f"edge-{attempt}")
        token = create_token(pki.root, "edge-001", 3600, now=NOW)
        certs.append(enroll_device(pki.root, token, build_csr(keys, "edge-001"), "edge-001", now=NOW))
    states = {c.serial: c.state for c in list_issued(pki.root, now=NOW) if c.name == "edge-001"}
    assert certs[1].superseded == [s for s, state in states.items() if state == "revoked"]
    assert sorted(states.values()) == ["revoked", "valid"]
