"""Compressed updates end to end: real server and daemons, mTLS and sealing on, digits.

The byte counts are the server's: each train reply's bytes as its process received them (sealed,
encoded), summed per round into ``metrics.jsonl`` (``train-uplink-bytes``). The float32 run is the
baseline, in the same federation, with the same seed and rounds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedge.client.data import write_partitions
from fedge.sim.local import LocalFederation
from fedge.tasks import load_task
from tests.conftest import fedge_cli

pytestmark = pytest.mark.e2e

ROUNDS = 6
CLIENTS = 3


def _run(fed: LocalFederation, *flags: str) -> list[dict[str, float]]:
    done = fedge_cli(
        "run", "start", "--server", fed.address, *fed.auth, "--task", "digits", "--rounds", str(ROUNDS),
        "--min-clients", str(CLIENTS), "--set", "seed=0", *flags,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    run_dir = Path(fed.control().list_runs()[-1].run_dir)
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_int8_and_top_k_move_far_fewer_bytes_for_the_same_accuracy(federation: LocalFederation) -> None:
    federation.start_server()
    paths = write_partitions(
        load_task("digits"), CLIENTS, "iid", 0, [federation.workdir / f"edge-{i}" for i in range(CLIENTS)]
    )
    for i, path in enumerate(paths):
        federation.start_daemon(f"edge-{i}", ["--data", str(path), "--node-config", f"partition-id={i}"])
    federation.wait_for_nodes(CLIENTS)
    runs = {name: _run(federation, *flags) for name, flags in {
        "float32": [], "int8": ["--compress", "int8"], "topk": ["--compress", "topk:0.05"],
    }.items()}  # fmt: skip

    def uplink(rows: list[dict[str, float]]) -> float:
        return sum(r["train-uplink-bytes"] for r in rows if r["round"] > 0)

    base = uplink(runs["float32"])
    ratios = {name: base / uplink(rows) for name, rows in runs.items()}
    accuracy = {name: rows[-1]["central-accuracy"] for name, rows in runs.items()}
    print(f"uplink ratios vs float32 ({base:.0f} B): {ratios}; accuracy after {ROUNDS} rounds: {accuracy}")
    assert ratios["int8"] >= 3.5 and ratios["topk"] >= 10, ratios
    for name in ("int8", "topk"):
        assert abs(accuracy[name] - accuracy["float32"]) <= 0.01, accuracy
        assert all(r["train-failures"] == 0 and r["train-replies"] == CLIENTS for r in runs[name][1:])
    assert accuracy["float32"] >= 0.9, accuracy  # control: the baseline did learn
