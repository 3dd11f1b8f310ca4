"""The same fedge apps on the fedge engine (real processes) and on Flower's Ray engine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import REPO, fedge_cli

pytestmark = pytest.mark.e2e


def _final_accuracy(workdir: Path) -> float:
    (metrics,) = workdir.rglob("metrics.jsonl")
    return float(json.loads(metrics.read_text().splitlines()[-1])["central-accuracy"])


def test_ray_engine_matches_the_fedge_engine(tmp_path: Path) -> None:
    common = ["--clients", "3", "--rounds", "2", "--partition", "dirichlet:0.5", "--seed", "3"]
    for engine in ("fedge", "ray"):
        done = fedge_cli("simulate", *common, "--engine", engine, "--workdir", str(tmp_path / engine))
        assert done.returncode == 0, done.stderr[-3000:]
        assert "round   2" in done.stderr
    fedge_acc, ray_acc = _final_accuracy(tmp_path / "fedge"), _final_accuracy(tmp_path / "ray")
    assert fedge_acc > 0.5
    assert abs(fedge_acc - ray_acc) <= 0.02, (fedge_acc, ray_acc)


def test_simulate_leaves_no_process_behind_on_ctrl_c(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fedge",
            "simulate",
            "--clients",
            "2",
            "--rounds",
            "10000",
            "--workdir",
            str(tmp_path),
        ],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"},
        # As at a terminal: a suite started in the background (`cmd &`) runs with SIGINT ignored,
        # which children inherit and Python then leaves ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stderr is not None
    for line in proc.stderr:  # wait until the run is going
        if line.startswith("round   1"):
            break
    # Keep draining stderr so a full pipe can never be what holds the simulator up.
    rest: list[str] = []
    drain = threading.Thread(target=lambda: rest.extend(proc.stderr or ()), daemon=True)
    drain.start()
    children = psutil.Process(proc.pid).children(recursive=True)
    assert len(children) >= 3  # server (+ its run worker) and two daemons
    proc.send_signal(signal.SIGINT)
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        logs = "".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in tmp_path.rglob("*.log"))
        after = "".join(rest)[-2000:]
        pytest.fail(f"simulate ignored Ctrl-C for 60 s; stderr after round 1: {after}\n{logs}")
    assert code == 130
    deadline = time.monotonic() + 15
    while any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children):
        assert time.monotonic() < deadline, [c for c in children if c.is_running()]
        time.sleep(0.1)
