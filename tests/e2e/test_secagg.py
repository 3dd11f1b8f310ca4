"""Secure aggregation on real processes: 5 daemons over mTLS, one killed during the masked-input stage."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from fedge.sim.local import LocalFederation
from tests.conftest import REPO
from tests.integration.test_secagg_inprocess import assert_matches

pytestmark = pytest.mark.e2e


def test_a_daemon_killed_during_masked_input_does_not_stop_the_round(tmp_path: Path) -> None:
    probe, work = tmp_path / "probe", tmp_path / "fed"
    probe.mkdir()
    work.mkdir()
    with LocalFederation(work) as fed:
        fed.start_server()
        daemons = {}
        for i in range(1, 6):
            args = ["--client-app", "tests.apps.secagg_probe:app", "--app-dir", str(REPO)]
            args += ["--node-config", f"partition-id={i}", "--node-config", f"probe-dir={probe}"]
            if i == 3:
                args += ["--node-config", "stall-round=1"]
            daemons[i] = fed.start_daemon(f"edge-{i}", args)
        fed.wait_for_nodes(5)
        client = fed.control()
        config = {
            "task": "digits",
            "num-server-rounds": 1,
            "min-clients": 4,
            "secagg": True,
            "central-eval": False,
            "fraction-evaluate": 0.0,
            "round-timeout": 120.0,
        }
        run = client.start_run("fedge.server.app:app", config, str(REPO))
        # Node 3 has its masked-input instruction (it is training) when it is killed.
        marker, deadline = probe / "stalled-3", time.monotonic() + 60
        while not marker.exists():
            assert time.monotonic() < deadline, "node 3 never reached the masked-input stage"
            time.sleep(0.05)
        daemons[3].send_signal(signal.SIGKILL)
        kinds = [e.kind for e in client.events(run.run_id)]
        status = client.get_run(run.run_id)
        assert kinds[-1] == "run-finished", status.error
        assert_matches(Path(status.run_dir), probe, [1, 2, 4, 5])
