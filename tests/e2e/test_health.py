"""The compose healthchecks (`python -m fedge.sim.health`) against a real server and daemon."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from fedge.sim.local import LocalFederation

pytestmark = pytest.mark.e2e


def _probe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fedge.sim.health", *args], capture_output=True, text=True)


def test_server_and_edge_healthchecks(federation: LocalFederation) -> None:
    fed = federation
    fed.start_server()
    state = fed.workdir / "edge-0"
    fed.start_daemon("edge-0", ["--node-config", "partition-id=0", "--node-config", "num-partitions=1"])
    fed.wait_for_nodes(1)
    deadline = time.monotonic() + 30
    while not (state / "inference_address").exists():
        assert time.monotonic() < deadline, "the daemon never wrote its inference address"
        time.sleep(0.1)

    tls = ["--tls-dir", str(fed.pki_dir), "--server-name", "localhost"]
    ok = _probe("server", "--address", fed.address, *tls)
    assert ok.returncode == 0 and "healthy: SERVING" in ok.stdout
    assert _probe("server", "--address", fed.enroll_address, *tls).returncode == 0
    anonymous = _probe("server", "--address", fed.address)  # the mTLS port refuses plaintext
    assert anonymous.returncode == 1 and anonymous.stderr.startswith("unhealthy:")

    edge = _probe("edge", "--state-dir", str(state))
    assert edge.returncode == 0 and "healthy: NOT_SERVING" in edge.stdout  # alive, no model yet
    no_model = _probe("edge", "--state-dir", str(state), "--require-model")
    assert no_model.returncode == 1 and "no model loaded" in no_model.stderr

    fed.close()
    gone = _probe("server", "--address", fed.address, *tls, "--timeout", "1")
    assert gone.returncode == 1
    assert _probe("edge", "--state-dir", str(state)).returncode == 1
