"""Device selection and eligibility end to end: real server and daemons with tags and signals.

Five daemons report ``region`` tags and a charging signal. Two of them run out of battery right
after their first heartbeat (their signal command says so from its third call on), and the
server's heartbeat interval is long, so the server still believes they are charging when a run
samples them: they must decline, and the round must go on with a stand-in, not count a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedge.client.data import write_partitions
from fedge.sim.local import LocalFederation
from fedge.tasks import load_task
from tests.conftest import fedge_cli

pytestmark = pytest.mark.e2e

# A signal provider whose battery dies after two readings (Hello, first heartbeat).
DYING = """
import json, pathlib, sys
count = pathlib.Path(sys.argv[1])
n = int(count.read_text()) if count.exists() else 0
count.write_text(str(n + 1))
print(json.dumps({"charging": n < 2}))
"""

DEVICES = {  # name: (tag, signal provider)
    "eu-a": ("region=eu", "charging"),
    "eu-b": ("region=eu", "dying"),
    "eu-e": ("region=eu", "dying"),
    "us-c": ("region=us", "charging"),
    "eu-d": ("region=eu", ""),  # no provider: every signal unknown
}


def _start(fed: LocalFederation) -> None:
    config = fed.workdir / "server.toml"
    # Heartbeats (which refresh what the server knows of a device) far apart: the server keeps
    # believing what the dying devices said in their first heartbeat.
    config.write_text("[server]\nheartbeat-interval = 120.0\nnode-timeout = 600.0\n")
    fed.start_server(["--config", str(config)])
    (fed.workdir / "dying.py").write_text(DYING)
    (fed.workdir / "charging.json").write_text(json.dumps({"charging": True}))
    paths = write_partitions(load_task("digits"), len(DEVICES), "iid", 0, [fed.workdir / n for n in DEVICES])
    for i, ((name, (tag, provider)), path) in enumerate(zip(DEVICES.items(), paths, strict=True)):
        signals = {
            "charging": ["--signals-file", str(fed.workdir / "charging.json")],
            "dying": [
                "--signals-command",
                f"{sys.executable} {fed.workdir / 'dying.py'} {fed.workdir / name}.n",
            ],
            "": [],
        }[provider]
        args = ["--data", str(path), "--node-config", f"partition-id={i}", "--tag", tag, *signals]
        fed.start_daemon(name, args)
    fed.wait_for_nodes(len(DEVICES))


def _tasks_taken(fed: LocalFederation, run_id: int) -> set[str]:
    """Devices that ran a task of the run (the runtime keeps each run's Context on disk)."""
    return {name for name in DEVICES if (fed.workdir / name / "runs" / str(run_id) / "context.pb").exists()}


def test_selection_declines_and_a_filter_nobody_meets(federation: LocalFederation) -> None:
    _start(federation)
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "COLUMNS": "400"}
    listing = subprocess.run(
        [sys.executable, "-m", "fedge", "nodes", "list", "--server", federation.address, *federation.auth],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert listing.returncode == 0, listing.stderr
    row = next(line for line in listing.stdout.splitlines() if "us-c" in line)
    assert "region=us" in row and "charging=yes" in row and "idle=unknown" in row and "GiB" in row
    nodes = {n.name: n for n in federation.control().list_nodes()}
    assert list(nodes["eu-a"].properties.tags) == ["region=eu"] and nodes["eu-a"].properties.cores >= 1
    assert nodes["eu-d"].properties.signals["charging"] == "unknown"

    # Eligible as far as the server knows: eu-a, and eu-b, eu-e (still "charging"). Two of three
    # are sampled; every sample holds a dying device, whose decline brings in the third.
    done = fedge_cli(
        "run", "start", "--server", federation.address, *federation.auth, "--task", "digits",
        "--rounds", "1", "--min-clients", "1", "--select", "region=eu", "--require", "charging",
        "--set", "fraction-train=0.67", "--set", "seed=0",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    run = federation.control().list_runs()[-1]
    rows = [json.loads(line) for line in (Path(run.run_dir) / "metrics.jsonl").read_text().splitlines()]
    last = rows[-1]
    assert last["train-declined"] == 2 and last["train-replaced"] == 1, last
    assert last["train-replies"] == 1 and last["train-failures"] == 0, last  # declines are no failures
    assert last["sampled-from"] == 3, last
    assert _tasks_taken(federation, run.run_id) == {"eu-a", "eu-b", "eu-e"}  # never us-c or eu-d

    # Nobody reports an unmetered link: the run cannot start, and says which filter is to blame.
    failed = fedge_cli(
        "run", "start", "--server", federation.address, *federation.auth, "--task", "digits",
        "--rounds", "1", "--min-clients", "2", "--select", "region=eu", "--require", "charging,unmetered",
        "--set", "node-wait-timeout=2",
    )  # fmt: skip
    assert failed.returncode == 1, failed.stderr
    assert "eligible edge nodes; 0 connected nodes match the run's filter" in failed.stderr
    assert '--select "region=eu" --require "charging,unmetered"' in failed.stderr
    assert "relax --select/--require" in failed.stderr
