"""Issue 14, item 7: enrollment against a real server process, attacked from the network side."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from fedge.client.tls import enroll
from fedge.errors import FedgeError
from fedge.security import create_token
from fedge.sim.local import LocalFederation
from tests.adversary.fleet import exchange, hello
from tests.conftest import fedge_cli

pytestmark = pytest.mark.e2e


@pytest.fixture
def fed(tmp_path: Path) -> Iterator[LocalFederation]:
    federation = LocalFederation(tmp_path)
    try:
        federation.start_server()
        yield federation
    finally:
        federation.close()


def _audit(fed: LocalFederation, event: str) -> list[dict[str, object]]:
    path = fed.workdir / "server" / "audit.jsonl"
    return [e for e in map(json.loads, path.read_text().splitlines()) if e["event"] == event]


def _welcomed(fed: LocalFederation, state: Path) -> bool:
    frames, error = exchange(fed.address, state, [hello()], timeout=5)
    if error is not None:
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED and "revoked" in (error.details() or "")
    return any(f.WhichOneof("kind") == "welcome" for f in frames)


def test_a_second_enrollment_of_a_name_revokes_the_first_certificate(fed: LocalFederation) -> None:
    first = fed.enroll("edge-r")
    assert _welcomed(fed, first)
    token_file = fed.workdir / "token"
    token_file.write_text(create_token(fed.pki_dir, "edge-r", 600) + "\n")
    second = fed.workdir / "edge-r-again"
    done = fedge_cli(
        "client", "enroll", "--server", fed.enroll_address, "--ca", str(fed.pki_dir / "ca.pem"),
        "--token-file", str(token_file), "--name", "edge-r", "--state-dir", str(second),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert not _welcomed(fed, first)  # the first certificate is revoked at once
    assert _welcomed(fed, second)
    (superseded,) = _audit(fed, "superseded")
    assert superseded["node"] == "edge-r" and len(superseded["revoked"]) == 1  # type: ignore[arg-type]


def test_the_token_can_come_from_the_environment(fed: LocalFederation) -> None:
    env_token = create_token(fed.pki_dir, "edge-env", 600)
    os.environ["FEDGE_ENROLL_TOKEN"] = env_token
    try:
        done = fedge_cli(
            "client", "enroll", "--server", fed.enroll_address, "--ca", str(fed.pki_dir / "ca.pem"),
            "--name", "edge-env", "--state-dir", str(fed.workdir / "edge-env"),
        )  # fmt: skip
    finally:
        del os.environ["FEDGE_ENROLL_TOKEN"]
    assert done.returncode == 0, done.stderr
    missing = fedge_cli(
        "client", "enroll", "--server", fed.enroll_address, "--ca", str(fed.pki_dir / "ca.pem"),
        "--name", "edge-none", "--state-dir", str(fed.workdir / "edge-none"),
    )  # fmt: skip
    assert missing.returncode == 2 and "error: no enrollment token" in missing.stderr
    assert "FEDGE_ENROLL_TOKEN" in missing.stderr and "Traceback" not in missing.stderr


def test_refusals_name_no_device_and_failures_lock_the_source_out(fed: LocalFederation) -> None:
    ca = (fed.pki_dir / "ca.pem").read_bytes()
    used = create_token(fed.pki_dir, "edge-victim", 600)
    enroll(fed.enroll_address, ca, used, "edge-victim", fed.workdir / "victim", timeout=10)
    with pytest.raises(FedgeError) as refused:  # someone else presents the victim's spent token
        enroll(fed.enroll_address, ca, used, "edge-thief", fed.workdir / "thief", timeout=10)
    assert "already used" in refused.value.message
    assert "edge-victim" not in refused.value.message and time.strftime("%Y-") not in refused.value.message
    (audited,) = _audit(fed, "enroll-refused")
    assert "edge-victim" in str(audited["reason"])  # the operator still sees the whole story

    started = time.monotonic()
    outcomes = []
    for attempt in range(10):
        try:
            enroll(
                fed.enroll_address, ca, f"guess-{attempt}", "edge-thief", fed.workdir / "thief", timeout=10
            )
        except FedgeError as exc:
            outcomes.append("locked" if "too many failed enrollments" in exc.message else "refused")
    assert outcomes == ["refused"] * 4 + ["locked"] * 6  # 5 failures in all (the spent token was 1)
    good = create_token(fed.pki_dir, "edge-late", 600)
    with pytest.raises(FedgeError, match="too many failed enrollments"):  # locked: not even looked at
        enroll(fed.enroll_address, ca, good, "edge-late", fed.workdir / "late", timeout=10)
    assert _audit(fed, "enroll-locked") and time.monotonic() - started < 30  # lockout is 30 s
