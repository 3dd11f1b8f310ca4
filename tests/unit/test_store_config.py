"""Store durability rules and config loading errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedge.config import EdgeConfig, ServerConfig, load, parse_assignments, require_insecure_allowed
from fedge.errors import FedgeError
from fedge.server.store import Store


def test_node_ids_are_stable_per_name_across_restarts(tmp_path: Path) -> None:
    store = Store(tmp_path / "fedge.db")
    a = store.node_id_for("edge-a", "peer1")
    assert store.node_id_for("edge-a", "peer2") == a != store.node_id_for("edge-b", "p")
    store.close()
    assert Store(tmp_path / "fedge.db").node_id_for("edge-a", "p") == a


def test_runs_left_running_become_interrupted(tmp_path: Path) -> None:
    store = Store(tmp_path / "fedge.db")
    row = store.create_run("x:app", {"num-server-rounds": 4}, "/", tmp_path / "runs")
    store.set_state(row.run_id, "running")
    store.put_round(row.run_id, 1, {"acc": 0.5})
    store.close()
    again = Store(tmp_path / "fedge.db")
    assert again.mark_interrupted() == [row.run_id]
    run = again.run(row.run_id)
    assert run is not None and run.state == "interrupted" and run.num_rounds == 4
    assert again.rounds(row.run_id) == [{"round": 1, "acc": 0.5}]


def test_events_are_sequenced(tmp_path: Path) -> None:
    store = Store(tmp_path / "fedge.db")
    store.add_event(5, "a", {"x": 1})
    store.add_event(5, "b", {})
    assert [(s, k) for s, k, _, _ in store.events(5)] == [(1, "a"), (2, "b")]
    assert [k for _, k, _, _ in store.events(5, after_seq=1)] == ["b"]


def test_config_from_toml_with_flag_overrides(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text('[edge]\nserver = "127.0.0.1:1"\nname = "e1"\n[edge.node-config]\ndata-path = "d.npz"\n')
    cfg = load(EdgeConfig, str(path), "edge", {"name": "e2", "server": None})
    assert (cfg.server, cfg.name, cfg.node_config) == ("127.0.0.1:1", "e2", {"data-path": "d.npz"})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[server\naddress=1", "malformed TOML"),
        ('[server]\nadress = "x"', "unknown key 'adress'.*did you mean 'address'"),
        ("[server]\ninsecure = 3", "must be bool"),
    ],
)
def test_bad_config_files_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "server.toml"
    path.write_text(text)
    with pytest.raises(FedgeError, match=message) as info:
        load(ServerConfig, str(path), "server", {})
    assert info.value.hint


def test_plaintext_rules_and_assignments() -> None:
    require_insecure_allowed("127.0.0.1:9", True)
    require_insecure_allowed("localhost:9", True)
    with pytest.raises(FedgeError, match="no TLS"):
        require_insecure_allowed("127.0.0.1:9", False)
    with pytest.raises(FedgeError, match="non-loopback"):
        require_insecure_allowed("192.0.2.1:9", True)
    assert parse_assignments(["a=1", "b=0.5", "c=true", "d=x=y"]) == {"a": 1, "b": 0.5, "c": True, "d": "x=y"}
    with pytest.raises(FedgeError):
        parse_assignments(["novalue"])
