"""Secret sampling on fedge's real grid: ε is reported with and without amplification by sampling."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from flwr.app import Context, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.run import Run

from fedge.server.app import app as server_app
from fedge.server.grid import FedgeGrid
from fedge.server.screening import ReplyScreen
from tests.apps import secagg_probe
from tests.integration.inprocess_fleet import RUN_ID, InProcessFleet, server_identity


def _run(tmp_path: Path, secret: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    probe, run_dir = tmp_path / f"probe-{secret}", tmp_path / f"run-{secret}"
    probe.mkdir()
    config: dict[str, Any] = {
        "task": "digits", "num-server-rounds": 2, "min-clients": 3, "fraction-train": 0.5,
        "secagg": True, "dp-noise": 1.0, "clip": 0.5, "central-eval": False,
        "fraction-evaluate": 0.0, "run-dir": str(run_dir), "secret-sampling": secret,
    }  # fmt: skip
    nodes = {i: {"partition-id": i, "probe-dir": str(probe)} for i in range(1, 7)}
    fleet = InProcessFleet(secagg_probe.app, nodes, tmp_path / f"edge-{secret}", config)
    server_identity()
    run = Run.create_empty(RUN_ID)
    grid = FedgeGrid(
        fleet,
        run,
        node_wait_timeout=5.0,
        screen=ReplyScreen(RUN_ID, lambda *a, **k: None),
        sampler=secrets.SystemRandom() if secret else None,  # what the run worker sets
    )
    server_app(grid, Context(RUN_ID, SUPERLINK_NODE_ID, {}, RecordDict(), config))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return rows[1:], json.loads((run_dir / "summary.json").read_text())


def test_secret_sampling_reports_both_epsilons(tmp_path: Path) -> None:
    rows, summary = _run(tmp_path, secret=True)
    assert [r["sampled-from"] for r in rows] == [6, 6] and [r["train-replies"] for r in rows] == [3, 3]
    assert all(r["dp-sampling-rate"] == 0.5 for r in rows)
    assert all(0 < r["dp-epsilon-amplified"] < r["dp-epsilon"] for r in rows), rows
    assert summary["dp-epsilon-amplified"] == rows[-1]["dp-epsilon-amplified"] < summary["dp-epsilon"]
    # Control: seeded sampling claims no amplification, and the same ε without it.
    plain_rows, plain = _run(tmp_path, secret=False)
    assert all("dp-epsilon-amplified" not in r for r in plain_rows) and plain["dp-epsilon-amplified"] is None
    assert plain["dp-epsilon"] == summary["dp-epsilon"]
