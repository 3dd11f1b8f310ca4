"""``fedge client start`` as a real subprocess: startup errors and SIGTERM mid-task."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from flwr.app import RecordDict

from .edge_fakes import FakeFleet, make_instruction, wait_for

REPO = Path(__file__).resolve().parents[2]
APP_ARGS = ["--client-app", "tests.integration.edge_test_app:app", "--app-dir", str(REPO)]
ENV = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}


def _client(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "fedge", "client", "start", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV, cwd=REPO)


def _assert_user_error(proc: subprocess.CompletedProcess[str], message: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-2].startswith("error: ") and message in lines[-2], proc.stderr
    assert lines[-1].startswith("hint: "), proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_data_file(tmp_path: Path) -> None:
    proc = _client(
        "--server",
        "127.0.0.1:9",
        "--insecure",
        "--data",
        str(tmp_path / "missing.npz"),
        "--state-dir",
        str(tmp_path / "edge"),
        *APP_ARGS,
    )
    _assert_user_error(proc, f"data file not found: {tmp_path / 'missing.npz'}")


def test_plaintext_refused_off_loopback(tmp_path: Path) -> None:
    proc = _client("--server", "192.0.2.10:9092", "--insecure", "--state-dir", str(tmp_path), *APP_ARGS)
    _assert_user_error(proc, "--insecure refused on non-loopback address 192.0.2.10")
    proc = _client("--server", "127.0.0.1:9092", "--state-dir", str(tmp_path), *APP_ARGS)
    _assert_user_error(proc, "no TLS credentials")


def test_bad_client_app_and_config_fail_fast(tmp_path: Path) -> None:
    proc = _client(
        "--server",
        "127.0.0.1:9",
        "--insecure",
        "--state-dir",
        str(tmp_path),
        "--client-app",
        "no_such_pkg.client:app",
    )
    _assert_user_error(proc, "cannot import module 'no_such_pkg.client'")
    cfg = tmp_path / "edge.toml"
    cfg.write_text('[edge]\nserver = "127.0.0.1:9"\nbogus-key = 1\n')
    _assert_user_error(_client("--config", str(cfg)), "unknown key 'bogus-key'")


def test_max_wait_exits_2(tmp_path: Path) -> None:
    proc = _client(
        "--server", "127.0.0.1:9", "--insecure", "--max-wait", "0.5", "--state-dir", str(tmp_path), *APP_ARGS
    )
    _assert_user_error(proc, "could not connect to 127.0.0.1:9")


def test_sigint_when_idle_exits_0_quietly(tmp_path: Path) -> None:
    fleet = FakeFleet().start()
    cmd = [
        sys.executable,
        "-m",
        "fedge",
        "client",
        "start",
        "--server",
        fleet.address,
        "--insecure",
        "--state-dir",
        str(tmp_path / "edge"),
        *APP_ARGS,
    ]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=ENV, cwd=REPO)
    try:
        stream = fleet.wait_streams(1, 60)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
        # Quiet by default: only the connection line an operator needs (no shutdown noise).
        lines = err.splitlines()
        assert proc.returncode == 0 and out == "" and len(lines) == 1, err
        assert f"connected to {fleet.address} as " in lines[0], err
        assert stream.ended.wait(5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        fleet.stop()


def test_sigterm_mid_task_sends_reply_and_exits_0(tmp_path: Path) -> None:
    fleet = FakeFleet().start()
    cmd = [
        sys.executable,
        "-m",
        "fedge",
        "client",
        "start",
        "--server",
        fleet.address,
        "--insecure",
        "--name",
        "edge-sig",
        "--state-dir",
        str(tmp_path / "edge"),
        "-v",
        *APP_ARGS,
    ]
    proc = subprocess.Popen(
        cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=ENV, cwd=REPO
    )
    lines: list[str] = []
    seen = threading.Condition()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            with seen:
                lines.append(line)
                seen.notify_all()

    threading.Thread(target=pump, daemon=True).start()
    try:
        stream = fleet.wait_streams(1, 60)
        assert stream.hello.name == "edge-sig"
        started, release = tmp_path / "started", tmp_path / "release"
        msg = make_instruction(RecordDict(), fleet.node_id, "train.slow", 77)
        mid = fleet.send(msg, {"started-file": str(started), "release-file": str(release)})
        wait_for(started.exists, 30, "the task to start")

        proc.send_signal(signal.SIGTERM)
        with seen:  # the daemon has taken the signal and is waiting for the task
            draining = seen.wait_for(lambda: any("letting the running task finish" in ln for ln in lines), 10)
        assert draining, lines
        assert not fleet.replied(mid) and proc.poll() is None
        release.touch()

        reply = fleet.wait_reply(mid, 15)
        assert not reply.has_error() and reply.metadata.reply_to_message_id == msg.metadata.message_id
        assert proc.wait(15) == 0
        assert stream.ended.wait(5)
        text = "".join(lines)
        assert "Traceback" not in text and "ERROR" not in text, text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        fleet.stop()
