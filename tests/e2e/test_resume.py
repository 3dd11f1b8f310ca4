"""Crash-safe runs end to end: kill -9 the server in round 3 of 5, restart it, `fedge run resume`.

Real server and daemon processes on loopback. The resumed run must end with exactly the model of
an uninterrupted run with the same seed (digits is deterministic: seeded client training, replies
aggregated in node order, round numbers continued, RNG and strategy state restored).

The daemons run fedge's ClientApp behind a gate (tests/apps/gated_client.py) that holds round 3
open, so the kill lands in the middle of round 3 every time, not after a round that takes
milliseconds. Streaming aggregation is off here: it folds replies in arrival order with fused
multiply-adds, so two uninterrupted runs already differ in the last bits (measured: up to 8e-7
after 5 rounds).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

from fedge.client.data import write_partitions
from fedge.server.control_client import ControlClient
from fedge.sim.local import LocalFederation
from fedge.tasks import load_task
from tests.conftest import REPO, fedge_cli
from tests.png import png_info

pytestmark = pytest.mark.e2e

APP = "fedge.server.app:app"
CONFIG = {
    "task": "digits",
    "num-server-rounds": 5,
    "min-clients": 2,
    "local-epochs": 1,
    "seed": 3,
    "streaming": False,
}


def _wait_for_end(client: ControlClient, run_id: int) -> str:
    kinds = [event.kind for event in client.events(run_id)]
    return kinds[-1]


def _final_model(client: ControlClient, run_id: int) -> dict[str, torch.Tensor]:
    run_dir = Path(client.get_run(run_id).run_dir)
    return torch.load(run_dir / "checkpoints" / "round-0005.pt", weights_only=True)


def _metrics(client: ControlClient, run_id: int) -> list[dict[str, Any]]:
    text = (Path(client.get_run(run_id).run_dir) / "metrics.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def test_a_server_killed_in_round_3_resumes_to_the_uninterrupted_model(
    federation: LocalFederation, tmp_path: Path
) -> None:
    fed = federation  # mTLS and sealed updates, as deployed
    address = fed.start_server()
    dirs = [tmp_path / f"edge-{i}" for i in range(2)]
    paths = write_partitions(load_task("digits"), 2, "iid", 0, dirs)
    gate = tmp_path / "gate"
    for i, path in enumerate(paths):
        gated = ["--client-app", "tests.apps.gated_client:app", "--app-dir", str(REPO)]
        fed.start_daemon(f"edge-{i}", ["--data", str(path), *gated, "--node-config", f"gate={gate}"])
    fed.wait_for_nodes(2)
    client = fed.control()
    whole = client.start_run(APP, CONFIG, str(REPO)).run_id
    assert _wait_for_end(client, whole) == "run-finished"

    gate.write_text("3")  # the daemons hold round 3's training until the gate opens
    run_id = client.start_run(APP, CONFIG, str(REPO)).run_id
    for event in client.events(run_id):
        if event.kind == "round-started" and json.loads(event.data_json)["round"] == 3:
            assert fed.server is not None
            os.killpg(fed.server.pid, signal.SIGKILL)  # the server and the run's worker
            fed.server.wait()
            break
    client.close()
    gate.unlink()

    fed.start_server_at(address)
    fed.wait_for_nodes(2)
    log = (tmp_path / "server.log").read_text()
    assert f"runs interrupted by the previous server exit: {run_id}" in log
    status = fedge_cli("run", "status", str(run_id), "--server", address, *fed.auth)
    assert status.returncode == 0, status.stderr
    marker = f"interrupted after committed round 2/5: continue with `fedge run resume {run_id}`"
    assert marker in status.stdout

    resumed = fedge_cli("run", "resume", str(run_id), "--server", address, *fed.auth)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed after round 2" in resumed.stderr and f"run {run_id} finished" in resumed.stderr

    client = fed.control()
    expected, got = _final_model(client, whole), _final_model(client, run_id)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    events = [(e.kind, json.loads(e.data_json or "{}")) for e in client.events(run_id)]
    resumed_at = max(i for i, (kind, _) in enumerate(events) if kind == "run-resumed")
    after = events[resumed_at:]
    assert [d["round"] for k, d in after if k == "round-started"] == [3, 4, 5]
    assert [d["round"] for k, d in after if k == "round-finished"] == [3, 4, 5]
    assert client.get_run(run_id).current_round == 5
    rows, reference = _metrics(client, run_id), _metrics(client, whole)
    assert [r["round"] for r in rows] == [0, 1, 2, 3, 4, 5]
    assert [r["central-accuracy"] for r in rows] == [r["central-accuracy"] for r in reference]
    plot = png_info(Path(client.get_run(run_id).run_dir) / "plots" / "accuracy.png")
    points = {k: len(v) for k, v in json.loads(plot.text["Description"]).items()}
    assert points == {"central-accuracy": 6, "eval-acc": 5}

    again = fedge_cli("run", "resume", str(run_id), "--server", address, *fed.auth)
    assert again.returncode == 2 and f"run {run_id} is finished" in again.stderr
    assert "hint: start a new run with `fedge run start`" in again.stderr
    client.close()
