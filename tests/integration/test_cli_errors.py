"""Bad input: one line `error: …`, one line `hint: …`, exit code 2, never a traceback."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from tests.conftest import fedge_cli


def _assert_clean_error(done: subprocess.CompletedProcess[str], needle: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and needle in lines[0], done.stderr
    assert lines[1].startswith("hint: "), done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unknown_strategy() -> None:
    done = fedge_cli("run", "start", "--server", "127.0.0.1:9", "--insecure", "--strategy", "fedbest")
    _assert_clean_error(done, "unknown strategy 'fedbest'")
    assert "fedavg" in done.stderr


def test_malformed_toml(tmp_path: Path) -> None:
    bad = tmp_path / "server.toml"
    bad.write_text("[server]\naddress = 127.0.0.1:9092\n")
    _assert_clean_error(fedge_cli("server", "start", "--config", str(bad)), "malformed TOML")


def test_missing_data_file(tmp_path: Path) -> None:
    done = fedge_cli(
        "client",
        "start",
        "--server",
        "127.0.0.1:9",
        "--insecure",
        "--data",
        str(tmp_path / "nope.npz"),
        "--state-dir",
        str(tmp_path),
    )
    _assert_clean_error(done, "data file not found")


def test_unreachable_server() -> None:
    done = fedge_cli("run", "start", "--server", f"127.0.0.1:{_closed_port()}", "--insecure")
    _assert_clean_error(done, "cannot reach the fedge server")


def test_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = fedge_cli(
            "server", "start", "--address", f"127.0.0.1:{port}", "--insecure", "--state-dir", str(tmp_path)
        )
    _assert_clean_error(done, f"cannot listen on 127.0.0.1:{port}")


def test_usage_errors_are_clean_too() -> None:
    _assert_clean_error(fedge_cli("run", "start", "--rounds", "many"), "")


def test_simulate_node_config_is_checked_before_anything_starts(tmp_path: Path) -> None:
    work = ["--workdir", str(tmp_path / "sim")]
    _assert_clean_error(fedge_cli("simulate", "--node-config", "no-equals-sign", *work), "--node-config")
    _assert_clean_error(
        fedge_cli("simulate", "--engine", "ray", "--node-config", "a=1", *work), "--node-config"
    )
    assert not (tmp_path / "sim").exists()


def test_async_refuses_secagg_and_ray_with_the_reason(tmp_path: Path) -> None:
    server = ["--server", "127.0.0.1:9", "--insecure", "--min-clients", "4"]
    done = fedge_cli("run", "start", *server, "--mode", "async", "--secagg")
    _assert_clean_error(done, "--secagg cannot run with --mode async")
    assert "cohort" in done.stderr
    work = ["--workdir", str(tmp_path / "sim")]
    _assert_clean_error(
        fedge_cli("simulate", "--engine", "ray", "--mode", "async", *work), "fedge's engine only"
    )
    _assert_clean_error(fedge_cli("simulate", "--mode", "async", "--buffer", "9", *work), "invalid buffer")
    assert not (tmp_path / "sim").exists()
