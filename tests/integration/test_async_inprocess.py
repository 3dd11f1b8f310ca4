"""Asynchronous buffered aggregation on fedge's real grid and ClientApp, in one process.

Time is simulated: each node's reply is ready a fixed number of grid waits after it was pushed
(slow nodes many, fast nodes one), so which updates are stale is decided by the loop's rules,
not by the machine's speed. The end-to-end test with real daemons is tests/e2e/test_async.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.run import Run

from fedge.client.app import app as client_app
from fedge.client.app import train_fn
from fedge.errors import FedgeError
from fedge.server.app import app as server_app
from fedge.server.grid import FedgeGrid, Outcome, Payload
from fedge.server.run_settings import RunSettings
from fedge.server.screening import ReplyScreen
from fedge.strategies.buffered import staleness_weight
from tests.integration.inprocess_fleet import RUN_ID, InProcessFleet, server_identity

FAST, SLOW = (1, 2, 3), (4,)


class TimedFleet(InProcessFleet):
    """Replies become visible ``lag[node]`` waits after their push; a wait with none ready advances time."""

    def __init__(self, *args: Any, lag: dict[int, int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lag = lag
        self.now = 0
        self.ready_at: dict[str, int] = {}
        self.pushed: list[tuple[int, int]] = []  # (node, round the instruction was sealed for)

    def push(self, items: list[tuple[str, int, Payload]], round: int, announcement: bytes) -> None:
        for message_id, node, _ in items:
            self.ready_at[message_id] = self.now + self.lag[node]
            self.pushed.append((node, round))
        super().push(items, round, announcement)

    def wait(self, message_ids: list[str], timeout: float | None, first: bool = False) -> dict[str, Outcome]:
        pending = [m for m in message_ids if m in self.outcomes]
        if not pending:
            return {}
        self.now = max(self.now + 1, min(self.ready_at[m] for m in pending))
        return {m: self.outcomes.pop(m) for m in pending if self.ready_at[m] <= self.now}


def _run(
    tmp_path: Path, config: dict[str, Any], audit: list[dict[str, Any]], app: ClientApp = client_app
) -> TimedFleet:
    nodes = {i: {"partition-id": i - 1, "num-partitions": 4} for i in (*FAST, *SLOW)}
    lag = {**dict.fromkeys(FAST, 1), **dict.fromkeys(SLOW, 6)}
    fleet = TimedFleet(app, nodes, tmp_path / "edge", config, lag=lag)
    server_identity()
    run = Run.create_empty(RUN_ID)
    run.override_config = dict(config)
    screen = ReplyScreen(RUN_ID, lambda event, **fields: audit.append({"event": event, **fields}))
    grid = FedgeGrid(fleet, run, node_wait_timeout=5.0, screen=screen)
    server_app(grid, Context(RUN_ID, SUPERLINK_NODE_ID, {}, RecordDict(), dict(config)))
    return fleet


def _config(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "task": "digits",
        "mode": "async",
        "buffer": 2,
        "max-staleness": 3,
        "num-server-rounds": 8,
        "min-clients": 4,
        "seed": 1,
        "run-dir": str(tmp_path / "run"),
        **extra,
    }


def test_versions_advance_without_the_slow_node_and_its_stale_updates_are_rejected(tmp_path: Path) -> None:
    audit: list[dict[str, Any]] = []
    fleet = _run(tmp_path, _config(tmp_path), audit)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["round"] for row in rows] == list(range(9))
    assert [row.get("version") for row in rows[1:]] == list(range(1, 9))
    assert all(row["updates"] == 2 for row in rows[1:])
    # The slow node answers after 6 waits: more than 3 versions came out meanwhile; it is refused.
    stale = [a for a in audit if a.get("reason") == "stale"]
    assert stale and all(a["node_id"] in SLOW for a in stale)
    assert sum(row["stale-rejected"] for row in rows[1:]) == len(stale)
    assert max(row["staleness-max"] for row in rows[1:]) <= 3
    # Instructions are sealed for the version they carry; a node trains once per version, on a
    # newer one each time, and the versions go out while the slow node is still busy.
    for node in FAST:
        sent = [v for n, v in fleet.pushed if n == node]
        assert sent == sorted(set(sent)) and sent[0] == 0 and sent[-1] >= 6, (node, sent)
    assert [v for n, v in fleet.pushed if n in SLOW][0] == 0
    assert rows[-1]["central-accuracy"] > rows[0]["central-accuracy"] + 0.3
    final = torch.load(tmp_path / "run" / "checkpoints" / "round-0008.pt", weights_only=True)
    assert final.keys()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["rounds"] == 8


def test_a_resumed_async_run_continues_from_the_last_committed_version(tmp_path: Path) -> None:
    audit: list[dict[str, Any]] = []
    _run(tmp_path, _config(tmp_path, **{"num-server-rounds": 3}), audit)
    _run(tmp_path, _config(tmp_path, **{"num-server-rounds": 5, "resume": True}), audit)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["round"] for row in rows] == list(range(6))


def _failing_app(fails: dict[int, int]) -> ClientApp:
    """fedge's ClientApp, except that node ``n``'s first ``fails[n]`` trainings raise."""
    app = ClientApp()

    @app.train()
    def train(message: Message, context: Context) -> Message:
        if fails.get(context.node_id, 0) > 0:
            fails[context.node_id] -= 1
            raise FedgeError("this device failed", "nothing to fix")
        return train_fn(message, context)

    return app


def test_a_device_that_failed_retries_when_no_other_can_fill_the_buffer(tmp_path: Path) -> None:
    # Buffer 4 of 4 devices: a failed training must be retried on the same version, or the
    # run would wait out its timeout.
    config = _config(tmp_path, **{"buffer": 4, "num-server-rounds": 2, "round-timeout": 60})
    _run(tmp_path, config, [], _failing_app({1: 1, 4: 1}))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["round"] for row in rows] == [0, 1, 2]
    assert rows[1]["train-failures"] == 2 and rows[1]["updates"] == 4


def test_a_run_whose_devices_all_fail_ends_at_the_timeout_with_the_counts(tmp_path: Path) -> None:
    config = _config(tmp_path, **{"round-timeout": 1})
    with pytest.raises(
        FedgeError, match=r"version 1: no update accepted for 1 s \(0 of 2 buffered, \d+ failed"
    ):
        _run(tmp_path, config, [], _failing_app(dict.fromkeys((*FAST, *SLOW), 10**6)))


def test_staleness_weight_is_one_over_the_root_of_one_plus_tau() -> None:
    assert [round(staleness_weight(t), 4) for t in (0, 1, 3, 8)] == [1.0, 0.7071, 0.5, 0.3333]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"secagg": True}, "--secagg cannot run with --mode async"),
        ({"strategy": "fedprox", "proximal-mu": 0.1}, "invalid strategy"),
        ({"buffer": 5}, "invalid buffer"),
        ({"dp-noise": 1.0, "clip": 1.0}, "invalid dp-noise"),
        ({"mode": "later"}, "invalid mode"),
    ],
)
def test_what_async_cannot_do_is_refused_before_the_run(extra: dict[str, Any], message: str) -> None:
    config = {"mode": "async", "min-clients": 4, **extra}
    with pytest.raises(FedgeError, match=message) as info:
        RunSettings.from_run_config(config)
    assert info.value.hint
