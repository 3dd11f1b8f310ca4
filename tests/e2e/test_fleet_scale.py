"""Fleet scale: 1,000 virtual devices (real mTLS streams, sealed replies) on one server process.

The devices come from ``bench/fleet_load.py`` (each with its own certificate, two processes); the
server is a real ``fedge server`` process. Its thread count is read from ``/proc/<pid>/status``
as devices connect: a stream is a coroutine on the event loop, never a thread. The full sweep to
10,000 devices is ``bench/fleet_scale.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.fleet_load import FleetLoad
from fedge.sim.local import LocalFederation
from tests.conftest import REPO

pytestmark = pytest.mark.e2e

DEVICES, SAMPLED = 1000, 200


#: gRPC core's own worker pool (threads named ``event_engine``) adds a worker when its queue backs
#: up, whatever the number of streams; measured: 4 idle, 6 under a 1,000-device connect storm.
CORE_POOL_SLACK = 4


def threads_of(pid: int) -> tuple[int, int]:
    """``Threads:`` of ``/proc/<pid>/status``, and how many of them are gRPC core's pool."""
    total = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("Threads:")
    )
    core = sum(
        Path(task, "comm").read_text().strip() == "event_engine"
        for task in Path(f"/proc/{pid}/task").iterdir()
    )
    return total, core


def test_1000_devices_one_server_and_a_round_of_200_sampled(tmp_path: Path) -> None:
    with LocalFederation(tmp_path) as fed:
        fed.start_server()
        assert fed.server is not None
        pid = fed.server.pid
        with FleetLoad(fed.address, fed.pki_dir, DEVICES, processes=2) as load:
            load.wait_connected(50, timeout=60)
            fed.wait_for_nodes(50)  # a Control call first: its handler thread counts from the start
            threads = {50: threads_of(pid)}
            load.wait_connected(500, timeout=60)
            threads[500] = threads_of(pid)
            load.wait_connected(DEVICES, timeout=60)
            fed.wait_for_nodes(DEVICES, timeout=30)
            threads[DEVICES] = threads_of(pid)
            # Flat: 20 times the devices, not one more thread of fedge's (the sync server had one
            # per stream), and gRPC core's pool within its slack.
            fedge_threads = {n: total - core for n, (total, core) in threads.items()}
            assert fedge_threads[DEVICES] == fedge_threads[500] == fedge_threads[50], threads
            assert threads[DEVICES][1] <= threads[50][1] + CORE_POOL_SLACK, threads

            config = {
                "task": "digits",
                "num-server-rounds": 1,
                "fraction-train": SAMPLED / DEVICES,
                "fraction-evaluate": 0.0,
                "min-clients": SAMPLED,
                "central-eval": False,
            }
            client = fed.control()
            run = client.start_run("fedge.server.app:app", config, str(REPO))
            kinds = [e.kind for e in client.events(run.run_id)]
            assert kinds[-1] == "run-finished", kinds
            assert load.connected == DEVICES  # nobody was dropped by the round
            assert load.failed == 0
        rows = [json.loads(line) for line in (Path(run.run_dir) / "metrics.jsonl").read_text().splitlines()]
        assert rows[-1]["round"] == 1
        assert rows[-1]["train-replies"] == SAMPLED and rows[-1]["train-failures"] == 0
