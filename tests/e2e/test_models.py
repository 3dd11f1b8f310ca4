"""Federated training to edge inference, end to end: `fedge simulate` (mTLS, real processes), the
server exports and signs the model, every daemon downloads, verifies and serves it, and
`fedge client predict` classifies a test image on each device."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, fedge_cli
from tests.model_runs import sample_image

pytestmark = pytest.mark.e2e


def test_simulate_then_every_daemon_serves_the_final_model(tmp_path: Path) -> None:
    work = tmp_path / "sim"
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    args = ["simulate", "--clients", "2", "--rounds", "2", "--workdir", str(work), "--hold"]
    args += ["--set", "local-epochs=1", "--set", "export=every:1"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedge", *args], stderr=subprocess.PIPE, text=True, env=env, cwd=REPO
    )
    lines: list[str] = []
    holding = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))
            if line.startswith("holding the federation"):
                holding.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert holding.wait(180), "\n".join(lines)
        served = dict(re.findall(r"^(edge-\d) serves model (\S+) on ", "\n".join(lines), re.M))
        assert sorted(served) == ["edge-0", "edge-1"], lines
        assert len(set(served.values())) == 1
        version = served["edge-0"]
        run_dir = next((work / "server" / "runs").iterdir())
        # every:1 exported round 1 too, but the daemons serve the final round's bundle.
        assert sorted(p.name for p in (run_dir / "bundles").iterdir()) == ["round-0001", "round-0002"]
        assert version.startswith(f"{run_dir.name}.2-")
        image, label = sample_image(run_dir, 2)
        np.save(tmp_path / "digit.npy", image)
        for name in served:
            state = work / name
            done = fedge_cli(
                "client", "predict", "--state-dir", str(state), "--input", str(tmp_path / "digit.npy")
            )
            assert done.returncode == 0, done.stderr
            assert f"model {version}" in done.stdout and f"sample 0: class {label} " in done.stdout
            # The device's copy is the server-signed bundle, verifiable with the key pinned at enrollment.
            ok = fedge_cli("model", "verify", str(state / "models" / version), "--state-dir", str(state))
            assert ok.returncode == 0 and ok.stdout.startswith(f"ok: bundle {version}"), ok.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        reader.join(10)
    assert code == 0, "\n".join(lines)
    assert not (work / "edge-0" / "inference_address").exists()  # daemons stopped cleanly
