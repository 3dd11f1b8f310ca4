"""The server round is one value: a secure run killed in round 3 of 5 and resumed says 3, 4, 5 everywhere.

fedge's ServerApp on fedge's real grid, client runtime and secagg mod (in-process). What is
checked after the resume: every ``round-started``/``round-finished`` report (what moves a run's
``current_round`` on the server), every ``metrics.jsonl`` row, the round each instruction is
pushed (and sealed) for, its ``group_id``, and the round the secure-aggregation stages carry to
the clients (their masks are bound to it). Before fedge owned its round loop, the resumed run
reported and secured rounds 1, 2, 3 while its config said 3, 4, 5.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fedge.client.runtime import decode_message
from fedge.security.secagg.wire import RECORD
from fedge.server.app import app as server_app
from fedge.server.grid import Payload
from tests.apps import secagg_probe
from tests.integration.inprocess_fleet import InProcessFleet, run_server_app, stage_of


class Killed(BaseException):
    """Stands for SIGKILL of the server: nothing in the app may catch it."""


class RecordingFleet(InProcessFleet):
    """An in-process fleet that notes, per pushed instruction, its round, group and secagg round."""

    def __init__(self, *args: Any, pushes: list[dict[str, Any]], die_at_mask: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pushes = pushes
        self.die_at_mask = die_at_mask

    def push(self, items: list[tuple[str, int, Payload]], round: int, announcement: bytes) -> None:
        for _, _, payload in items:
            msg = decode_message(payload if isinstance(payload, bytes) else b"".join(payload))
            stage = stage_of(msg)
            record = msg.content.config_records.get(RECORD) if msg.has_content() else None
            self.pushes.append(
                {
                    "round": round,
                    "group": msg.metadata.group_id,
                    "type": msg.metadata.message_type,
                    "stage": stage,
                    "secagg-round": record.get("round") if record is not None else None,
                    "config-round": _config_round(msg),
                }
            )
            masks = sum(p["stage"] == "mask" for p in self.pushes)
            if self.die_at_mask and masks >= self.die_at_mask:
                raise Killed
        super().push(items, round, announcement)


def _config_round(msg: Any) -> int | None:
    if not msg.has_content() or "config" not in msg.content.config_records:
        return None
    value = msg.content.config_records["config"].get("server-round")
    return int(value) if value is not None else None


def _run(
    tmp_path: Path,
    reports: list[tuple[str, dict[str, Any]]],
    pushes: list[dict[str, Any]],
    die_at_mask: int = 0,
    resume: bool = False,
) -> None:
    probe = tmp_path / "probe"
    probe.mkdir(exist_ok=True)
    config: dict[str, Any] = {
        "task": "digits",
        "num-server-rounds": 5,
        "strategy": "fedavgm",
        "server-momentum": 0.9,
        "min-clients": 3,
        "secagg": True,
        "fraction-evaluate": 1.0,
        "central-eval": False,
        "run-dir": str(tmp_path / "run"),
        **({"resume": True} if resume else {}),
    }
    nodes = {i: {"partition-id": i, "probe-dir": str(probe)} for i in range(1, 6)}
    fleet = RecordingFleet(
        secagg_probe.app, nodes, tmp_path / "edge", config, pushes=pushes, die_at_mask=die_at_mask
    )
    run_server_app(server_app, fleet, config, lambda kind, data: reports.append((kind, data)))


def test_a_resumed_run_carries_the_true_server_round_everywhere(tmp_path: Path) -> None:
    reports: list[tuple[str, dict[str, Any]]] = []
    before: list[dict[str, Any]] = []
    with pytest.raises(Killed):  # 5 clients: the 11th masked-input instruction is round 3's first
        _run(tmp_path, reports, before, die_at_mask=11)
    killed_events = len(reports)
    after: list[dict[str, Any]] = []
    _run(tmp_path, reports, after, resume=True)

    resumed = reports[killed_events:]
    started = [data["round"] for kind, data in resumed if kind == "round-started"]
    finished = [data["round"] for kind, data in resumed if kind == "round-finished"]
    assert started == [3, 4, 5] and finished == [3, 4, 5]
    # What the server makes of these events: a run's current round never moves backwards.
    rounds = [data["round"] for kind, data in reports if kind in ("round-started", "round-finished")]
    assert rounds == sorted(rounds) and rounds[0] == 0 and rounds[-1] == 5

    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["round"] for row in rows] == [0, 1, 2, 3, 4, 5]

    # Every instruction of the resumed run: pushed (and sealed) for its round, grouped by it, and
    # the secure-aggregation stages bound to it.
    assert {p["round"] for p in after} == {3, 4, 5}
    for push in after:
        assert push["group"] == str(push["round"]), push
        if push["config-round"] is not None:
            assert push["config-round"] == push["round"], push
        if push["stage"] == "advertise":
            assert push["secagg-round"] == push["round"], push
    advertised = sorted({p["secagg-round"] for p in after if p["stage"] == "advertise"})
    assert advertised == [3, 4, 5]
    assert {p["stage"] for p in after} >= {"advertise", "share", "mask", "unmask"}
    assert any(p["type"] == "evaluate" for p in after)
    # And before the kill, rounds 1 and 2 (and the start of 3) were numbered the same way.
    assert [p["secagg-round"] for p in before if p["stage"] == "advertise"][::5] == [1, 2, 3]
