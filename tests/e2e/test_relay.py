"""A two-level federation: server → 2 relays → 2 real daemons each, mTLS and sealing on.

The flat federation (the same 4 daemons, the same partitions and seeds, connected to the server)
is the reference: each relay answers with its subtree's weighted mean and weight, so the server's
FedAvg of 2 partial aggregates must be the flat FedAvg of 4 updates, up to float rounding (the
fold order differs). Then a relay is killed in the middle of round 2 (its devices hold round 2
behind a gate, so it cannot have answered): the round completes with the other relay's subtree.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

from fedge.server.control_client import ControlClient
from fedge.sim.local import LocalFederation
from tests.conftest import REPO, fedge_cli

pytestmark = pytest.mark.e2e

APP = "fedge.server.app:app"
CONFIG: dict[str, Any] = {
    "task": "digits",
    "num-server-rounds": 2,
    "min-clients": 1,
    "local-epochs": 1,
    "seed": 5,
    "partition": "dirichlet:0.5",  # unequal local sets (315..407 samples): the weights matter
    "central-eval": False,
}


def _device_args(i: int, extra: list[str] = ()) -> list[str]:  # type: ignore[assignment]
    return ["--node-config", f"partition-id={i}", "--node-config", "num-partitions=4", *extra]


def _run(client: ControlClient, config: dict[str, Any]) -> tuple[int, list[tuple[str, dict[str, Any]]]]:
    run_id = client.start_run(APP, config, str(REPO)).run_id
    events = [(e.kind, json.loads(e.data_json or "{}")) for e in client.events(run_id)]
    return run_id, events


def _model(client: ControlClient, run_id: int, round_: int) -> dict[str, torch.Tensor]:
    run_dir = Path(client.get_run(run_id).run_dir)
    return torch.load(run_dir / "checkpoints" / f"round-{round_:04d}.pt", weights_only=True)  # type: ignore[no-any-return]


def _rows(client: ControlClient, run_id: int) -> list[dict[str, Any]]:
    text = (Path(client.get_run(run_id).run_dir) / "metrics.jsonl").read_text()
    return [row for row in map(json.loads, text.splitlines()) if row["round"] >= 1]


def _relays(fed: LocalFederation, gate: Path | None = None) -> list[tuple[str, Any]]:
    """Two relays with two daemons each (devices 0, 1 under relay-a; 2, 3 under relay-b)."""
    relays = []
    for r, name in enumerate(("relay-a", "relay-b")):
        proc, address = fed.start_relay(name, ["--min-devices", "2"])
        relays.append((name, proc))
        for i in (2 * r, 2 * r + 1):
            extra = ["--server-name", name]
            if gate is not None and r == 0:
                extra += ["--client-app", "tests.apps.gated_client:app", "--app-dir", str(REPO)]
                extra += ["--node-config", f"gate={gate}"]
            fed.start_daemon(f"edge-{i}", _device_args(i, extra), server=address)
    fed.wait_for_nodes(2)
    return relays


def test_two_levels_of_relays_give_the_flat_federations_model(federation: LocalFederation) -> None:
    fed = federation  # mTLS and sealed updates, as deployed
    fed.start_server()
    for i in range(4):
        fed.start_daemon(f"edge-{i}", _device_args(i))
    fed.wait_for_nodes(4)
    client = fed.control()
    flat, events = _run(client, {**CONFIG, "min-clients": 4})
    assert events[-1][0] == "run-finished", events[-1]
    fed.stop_daemons()

    _relays(fed)
    tree, events = _run(client, {**CONFIG, "min-clients": 2})
    assert events[-1][0] == "run-finished", events[-1]
    assert [n.name for n in client.list_nodes() if n.online] == ["relay-a", "relay-b"]
    # Round 1 aggregates bit-identical updates: the models differ only by the rounding of two
    # summation orders. Round 2's devices train from those models, and SGD amplifies the rounding
    # (measured up to 1.2e-5 absolute), hence the looser bound there.
    for round_, rtol, atol in ((1, 1e-5, 1e-6), (2, 1e-3, 1e-4)):
        expected, got = _model(client, flat, round_), _model(client, tree, round_)
        assert expected.keys() == got.keys()
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=rtol, atol=atol)
    # The server saw 2 replies per round (the relays), each the partial aggregate of 2 devices,
    # and the relays' weighted metric means give the flat run's metrics too.
    tree_rows, flat_rows = _rows(client, tree), _rows(client, flat)
    assert [row["train-replies"] for row in tree_rows] == [2, 2]
    assert [row["train-replies"] for row in flat_rows] == [4, 4]
    for t, f in zip(tree_rows, flat_rows, strict=True):
        for key in ("train-loss", "eval-loss"):
            assert t[key] == pytest.approx(f[key], rel=1e-4)
        assert t["eval-acc"] == pytest.approx(f["eval-acc"], abs=0.01)
    client.close()
    # Secure aggregation cannot pass through relays: refused before a run exists, with the reason.
    args = ["--task", "digits", "--rounds", "1", "--min-clients", "3", "--secagg"]
    refused = fedge_cli("run", "start", "--server", fed.address, *fed.auth, *args, timeout=120)
    assert refused.returncode == 2, refused.stderr
    assert "error: secure aggregation cannot pass through relays (docs/relay.md)" in refused.stderr
    assert "hint: connect its devices to the server, not to relays" in refused.stderr


def test_a_relay_killed_mid_round_costs_only_its_subtree(federation: LocalFederation, tmp_path: Path) -> None:
    fed = federation
    fed.start_server()
    gate = tmp_path / "gate"
    gate.write_text("2")  # relay-a's devices hold round 2's training: relay-a cannot have answered
    (name, doomed), _ = _relays(fed, gate)
    assert name == "relay-a"
    client = fed.control()
    run_id = client.start_run(APP, CONFIG, str(REPO)).run_id
    kinds = []
    for event in client.events(run_id):
        kinds.append(event.kind)
        if event.kind == "round-started" and json.loads(event.data_json)["round"] == 2:
            os.killpg(doomed.pid, signal.SIGKILL)
            doomed.wait()
            gate.unlink()  # its devices may go on (they have no relay to answer to)
    assert kinds[-1] == "run-finished"
    rows = _rows(client, run_id)
    assert [row["round"] for row in rows] == [1, 2]
    assert [row["train-replies"] for row in rows] == [2, 1]  # round 2: relay-b's subtree only
    assert rows[1]["train-failures"] == 1
    client.close()


def test_a_relay_under_a_relay(federation: LocalFederation) -> None:
    """Three levels, mTLS and sealing: the lower relay's per-run key is announced through the upper."""
    fed = federation
    fed.start_server()
    _, upper = fed.start_relay("relay-up")
    _, lower = fed.start_relay(
        "relay-down", ["--server-name", "relay-up", "--min-devices", "2"], server=upper
    )
    for i in range(2):
        fed.start_daemon(f"edge-{i}", _device_args(i, ["--server-name", "relay-down"]), server=lower)
    fed.wait_for_nodes(1)
    client = fed.control()
    run_id, events = _run(client, {**CONFIG, "num-server-rounds": 1})
    assert events[-1][0] == "run-finished", events[-1]
    assert [row["train-replies"] for row in _rows(client, run_id)] == [1]
    client.close()
    audit = (fed.workdir / "relay-up" / "children" / "audit.jsonl").read_text().splitlines()
    forwarded = [json.loads(line) for line in audit if '"relay-key-forwarded"' in line]
    assert [(e["node"], e["run_id"]) for e in forwarded] == [("relay-down", run_id)]
