"""``fedge pki`` commands through typer's CliRunner (the lead mounts ``app`` as ``fedge pki``)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedge.errors import FedgeError
from fedge.security import RevocationList, build_csr, consume_token, make_device_keys, sign_device_csr
from fedge.security.cli import app, parse_duration

runner = CliRunner()


def ok(*args: str) -> tuple[str, str]:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout, result.stderr


def fails(*args: str) -> FedgeError:
    result = runner.invoke(app, list(args))
    assert result.exit_code != 0 and isinstance(result.exception, FedgeError), result.output
    return result.exception


def test_full_cli_flow(tmp_path: Path) -> None:
    d = str(tmp_path / "pki")
    _, err = ok("init", "--dir", d)
    assert "created fedge PKI" in err and "issue-server" in err
    ok("issue-server", "--dir", d, "--host", "fedge.example.com", "--ip", "10.0.0.5", "--ip", "127.0.0.1")
    ok("issue-admin", "--dir", d)
    assert stat.S_IMODE((tmp_path / "pki" / "admin.key").stat().st_mode) == 0o600
    token, err = ok("token", "create", "--dir", d, "--name", "edge-001", "--ttl", "24h")
    assert token.count("\n") == 1 and len(token.strip()) >= 43  # only the token on stdout
    assert "single use" in err
    keys = make_device_keys(tmp_path / "edge")
    consume_token(d, token.strip(), "edge-001")
    sign_device_csr(d, build_csr(keys, "edge-001"), "edge-001")
    _, err = ok("revoke", "--dir", d, "--name", "edge-001")
    assert "revoked 1 certificate" in err
    assert len(RevocationList.load(d)) == 1
    listing, _ = ok("list", "--dir", d)
    for expected in ("fedge CA", "fedge.example.com", "admin", "edge-001", "revoked", "valid", "device"):
        assert expected in listing


def test_bad_commands_are_fedge_errors(tmp_path: Path) -> None:
    d = str(tmp_path / "pki")
    assert "fedge pki init" in fails("list", "--dir", d).hint
    ok("init", "--dir", d)
    assert "already exists" in fails("init", "--dir", d).message
    assert "invalid duration" in fails("token", "create", "--dir", d, "--name", "e1", "--ttl", "soon").message
    assert "no certificate was issued" in fails("revoke", "--dir", d, "--name", "ghost").message
    assert "invalid IP address" in fails("issue-server", "--dir", d, "--host", "h", "--ip", "1.2.3").message


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("15m", 900), ("24h", 86400), ("7d", 604800), ("90", 90), ("1.5h", 5400)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0h", "-1h", "1w", "h"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(FedgeError, match="invalid duration"):
        parse_duration(text)
