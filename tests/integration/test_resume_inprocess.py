"""Resuming fedge's ServerApp, in-process: a run "killed" in round 3 and resumed ends exactly as an
uninterrupted run — server-side optimiser state (FedAdam moments, FedAvgM momentum), node
sampling (``random``) and client seeds (round numbers) included — even when the newest commit is
torn and the resume has to start one round earlier.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedge.errors import FedgeError
from fedge.server.app import app as server_app
from fedge.server.commit import CommitStore
from fedge.server.plots import PLOTS
from tests.integration.test_apps_inprocess import RUN_ID, InProcessGrid
from tests.png import png_info


class Killed(BaseException):
    """Stands for SIGKILL: nothing in the app may catch it."""


class DyingGrid(InProcessGrid):
    """An InProcessGrid whose server 'dies' when round ``die_in``'s first train message is sent."""

    def __init__(self, num_nodes: int, die_in: int) -> None:
        super().__init__(num_nodes)
        self.die_in = die_in

    def respond(self, message: Message, node: int) -> Message:
        config = message.content.config_records["config"]
        if message.metadata.message_type == MessageType.TRAIN and config["server-round"] == self.die_in:
            raise Killed
        return super().respond(message, node)


@pytest.fixture(autouse=True)
def _task_identity() -> None:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, RUN_ID, 0


def _run(grid: InProcessGrid, run_dir: Path, config: dict[str, Any], resume: bool = False) -> None:
    run_config = {**config, "run-dir": str(run_dir), **({"resume": True} if resume else {})}
    server_app(grid, Context(RUN_ID, 0, {}, RecordDict(), run_config))


def _lines(run_dir: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if "seconds" not in k and "time" not in k} for row in rows]


def _model(run_dir: Path, server_round: int) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / f"round-{server_round:04d}.pt", weights_only=True)


BASE = {"num-server-rounds": 5, "min-clients": 2, "local-epochs": 1, "partition": "iid"}


@pytest.mark.parametrize(
    ("config", "nodes", "torn"),
    [
        pytest.param({"strategy": "fedadam", "eta": 0.01}, 2, False, id="fedadam"),
        pytest.param({"strategy": "fedavgm", "server-momentum": 0.9}, 2, False, id="fedavgm"),
        # 2 of 4 nodes sampled per round (by `random`), and the newest commit torn.
        pytest.param({"fraction-train": 0.5, "fraction-evaluate": 0.5}, 4, True, id="sampled-torn"),
    ],
)
def test_resumed_run_ends_as_the_uninterrupted_one(
    tmp_path: Path, config: dict[str, Any], nodes: int, torn: bool
) -> None:
    config = {**BASE, **config}
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    _run(InProcessGrid(nodes), whole, config)

    with pytest.raises(Killed):
        _run(DyingGrid(nodes, die_in=3), resumed, config)
    store = CommitStore(resumed / "state")
    assert store.latest_round() == 2
    if torn:  # a torn newest file: the resume must fall back to round 1
        newest = store.path(2)
        newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
        assert store.latest_round() == 1
    _run(InProcessGrid(nodes), resumed, config, resume=True)

    final_whole, final_resumed = _model(whole, 5), _model(resumed, 5)
    assert final_whole.keys() == final_resumed.keys()
    for key in final_whole:
        assert torch.equal(final_whole[key], final_resumed[key]), key
    assert _lines(resumed) == _lines(whole)
    assert [row["round"] for row in _lines(resumed)] == [0, 1, 2, 3, 4, 5]
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["rounds"] == 5 and summary["settings"]["resume"] is True
    assert sorted(p.name for p in (resumed / "state").iterdir()) == [
        "round-0003.ckpt",
        "round-0004.ckpt",
        "round-0005.ckpt",
    ]


def test_every_run_writes_its_plots(tmp_path: Path) -> None:
    _run(InProcessGrid(2), tmp_path, {**BASE, "num-server-rounds": 3})
    points = {}
    for name in PLOTS:
        info = png_info(tmp_path / "plots" / name)
        assert (info.width, info.height) == (640, 400)
        points[name] = {k: len(v) for k, v in json.loads(info.text["Description"]).items()}
    # Central evaluation covers round 0 (the initial model); client metrics start in round 1.
    assert points["accuracy.png"] == {"eval-acc": 3, "central-accuracy": 4}
    assert points["loss.png"] == {"train-loss": 3, "eval-loss": 3, "central-loss": 4}


def test_resume_without_a_commit_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(FedgeError, match="no committed round") as err:
        _run(InProcessGrid(2), tmp_path, BASE, resume=True)
    assert "fedge run start" in err.value.hint


def test_resume_with_another_strategy_is_refused(tmp_path: Path) -> None:
    with pytest.raises(Killed):
        _run(DyingGrid(2, die_in=2), tmp_path, {**BASE, "strategy": "fedadam"})
    with pytest.raises(FedgeError, match="belongs to strategy FedAdam, this run builds FedAvgM"):
        _run(InProcessGrid(2), tmp_path, {**BASE, "strategy": "fedavgm"}, resume=True)
