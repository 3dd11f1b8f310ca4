"""The Prometheus series of server and daemon, fed by hand: round accounting, bounded labels,
one registry per instance, the HTTP endpoint on port 0, the runtime's task observer."""

from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.supercore.task_identity import TaskIdentity
from prometheus_client import CollectorRegistry, generate_latest

from fedge.client.metrics import EdgeMetrics, message_category
from fedge.client.models import ModelStore
from fedge.client.runtime import ClientRuntime
from fedge.codec import encode_message
from fedge.errors import FedgeError
from fedge.server.metrics import MAX_REASONS, ServerMetrics
from fedge.server.router import Router, Session
from fedge.server.store import Store
from fedge.server.worker import _reported


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


@pytest.fixture
def server(tmp_path: Path) -> ServerMetrics:
    store = Store(tmp_path / "fedge.db")
    return ServerMetrics(Router(), store)


def test_rounds_of_fedge_app_are_counted_at_round_finished(server: ServerMetrics) -> None:
    reg = server.registry
    server.on_event(7, "run-started", {})
    server.on_event(7, "round-finished", {"round": 0})  # the initial evaluation is not a round
    for rnd in (1, 2):
        server.on_event(7, "round-started", {"round": rnd})
        server.on_event(7, "round-finished", {"round": rnd, "metrics": {}})
    server.on_event(7, "run-finished", {})
    assert sample(reg, "fedge_server_rounds_completed_total") == 2
    assert sample(reg, "fedge_server_round_duration_seconds_count") == 2
    assert sample(reg, "fedge_server_run_failures_total") == 0


def test_rounds_of_a_stock_flower_app_end_when_the_next_starts_or_the_run_ends(server: ServerMetrics) -> None:
    for rnd in (1, 2, 3):
        server.on_event(8, "round-started", {"round": rnd})
    server.on_event(8, "run-finished", {})
    assert sample(server.registry, "fedge_server_rounds_completed_total") == 3


def test_an_unfinished_round_of_a_failed_run_is_not_completed(server: ServerMetrics) -> None:
    server.on_event(9, "round-started", {"round": 1})
    server.on_event(9, "run-failed", {"error": "too few clients"})
    server.on_event(9, "run-finished", {})  # nothing open any more
    assert sample(server.registry, "fedge_server_rounds_completed_total") == 0
    assert sample(server.registry, "fedge_server_run_failures_total") == 1


def test_rejection_reasons_are_bounded(server: ServerMetrics) -> None:
    reg = server.registry
    server.on_event(1, "update-rejected", {"reason": "norm"})
    server.on_event(1, "update-rejected", {"reason": "Not A Code {}"})
    server.on_event(1, "update-rejected", {})
    for i in range(MAX_REASONS + 5):
        server.on_event(1, "update-rejected", {"reason": f"r{i}"})
    text = generate_latest(reg).decode()
    reasons = {
        line.split('"')[1]
        for line in text.splitlines()
        if line.startswith("fedge_server_updates_rejected_total{")
    }
    assert len(reasons) == MAX_REASONS
    assert sample(reg, "fedge_server_updates_rejected_total", reason="norm") == 1
    # "norm" and "other" took two of the slots; r0… took the rest, later codes fall into "other".
    overflow = (MAX_REASONS + 5) - (MAX_REASONS - 2)
    assert sample(reg, "fedge_server_updates_rejected_total", reason="other") == 2 + overflow


def test_bad_event_data_never_raises(server: ServerMetrics) -> None:
    server.on_event(1, "round-finished", {"round": object()})
    server.on_event(1, "round-finished", None)  # type: ignore[arg-type]


def test_live_gauges_read_router_and_store(tmp_path: Path) -> None:
    store, router = Store(tmp_path / "fedge.db"), Router()
    metrics = ServerMetrics(router, store)
    run = store.create_run("a:b", {}, ".", tmp_path / "runs")
    store.set_state(run.run_id, "failed", "x")
    for node_id in (2, 3):
        router.open(Session(node_id=node_id, name=f"n{node_id}", peer="p"))
    reg = metrics.registry
    assert sample(reg, "fedge_server_nodes_connected") == 2
    assert sample(reg, "fedge_server_runs", state="failed") == 1
    assert sample(reg, "fedge_server_runs", state="running") == 0
    store.close()  # a scrape during shutdown still answers
    assert sample(reg, "fedge_server_runs", state="failed") == 0


def test_each_instance_has_its_own_registry_and_endpoint(tmp_path: Path) -> None:
    a, b = (ServerMetrics(Router(), Store(tmp_path / f"{n}.db")) for n in "ab")
    a.rounds.inc(3)
    try:
        addr_a = a.serve("127.0.0.1:0", tmp_path / "a")
        addr_b = b.serve("127.0.0.1:0", tmp_path / "b")
        assert (tmp_path / "a" / "metrics_address").read_text().strip() == addr_a != addr_b
        for addr, rounds in ((addr_a, 3.0), (addr_b, 0.0)):
            with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as response:
                text = response.read().decode()
            assert f"fedge_server_rounds_completed_total {rounds}" in text
            assert "process_resident_memory_bytes" in text
    finally:
        a.close()
        b.close()


def test_a_taken_port_is_an_actionable_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(FedgeError, match="cannot serve metrics") as info:
            ServerMetrics(Router(), Store(tmp_path / "db")).serve(f"127.0.0.1:{port}", tmp_path)
    assert "--metrics-address" in info.value.hint


def test_worker_reports_each_rejection_it_audits() -> None:
    audited: list[tuple[str, dict[str, Any]]] = []
    reported: list[tuple[str, dict[str, Any]]] = []

    class Link:
        def event(self, kind: str, data: dict[str, Any]) -> None:
            reported.append((kind, data))

    write = _reported(lambda e, **f: audited.append((e, f)), Link())  # type: ignore[arg-type]
    write("update-rejected", node_id=5, reason="norm", detail="x" * 500, message_type="train")
    write("something-else", node_id=5)
    assert [e for e, _ in audited] == ["update-rejected", "something-else"]
    assert reported == [
        ("update-rejected", {"node_id": 5, "reason": "norm", "message_type": "train", "detail": "x" * 200})
    ]
    json.dumps(reported)


# -- daemon ---------------------------------------------------------------------------------


def test_message_categories_are_flowers_own() -> None:
    assert [message_category(t) for t in ("train", "evaluate.x", "query.secagg", "system", "mine", "")] == [
        "train",
        "evaluate",
        "query",
        "system",
        "other",
        "other",
    ]


def test_edge_series(tmp_path: Path) -> None:
    models = ModelStore(tmp_path)
    connected = [False]
    edge = EdgeMetrics(lambda: connected[0], models)
    reg = edge.registry
    assert sample(reg, "fedge_edge_connected") == 0
    connected[0] = True
    assert sample(reg, "fedge_edge_connected") == 1
    for count in (1, 2, 3):
        edge.welcomed(count)
    assert sample(reg, "fedge_edge_reconnects_total") == 2
    assert sample(reg, "fedge_edge_tasks_total", type="system", outcome="ok") == 0  # exists at 0
    assert "fedge_edge_active_model_info{" not in generate_latest(reg).decode()  # no model yet
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "active.json").write_text(json.dumps({"version": "12.3-ab", "pinned": True}))
    assert sample(reg, "fedge_edge_active_model_info", version="12.3-ab", pinned="true") == 1


app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    if context.run_config.get("fail"):
        raise ValueError("asked to fail")
    return Message(RecordDict(), reply_to=msg)


def test_runtime_reports_each_task_with_its_outcome(tmp_path: Path) -> None:
    edge = EdgeMetrics(lambda: True, ModelStore(tmp_path))
    runtime = ClientRuntime(app, {}, tmp_path)
    runtime.node_id, runtime.observe = 99, edge.task
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 11, 1
    msg = Message(RecordDict(), dst_node_id=99, message_type="train")
    msg.metadata.__dict__["_message_id"] = "mid-1"
    data = encode_message(msg)
    runtime.handle_bytes(data, json.dumps({}))
    runtime.handle_bytes(data, json.dumps({"fail": True}))
    with pytest.raises(FedgeError):  # the codec refuses it; the daemon drops such an instruction
        runtime.handle_bytes(b"garbage")
    reg = edge.registry
    assert sample(reg, "fedge_edge_tasks_total", type="train", outcome="ok") == 1
    assert sample(reg, "fedge_edge_tasks_total", type="train", outcome="error") == 1
    assert sample(reg, "fedge_edge_tasks_total", type="other", outcome="undecodable") == 1
    assert sample(reg, "fedge_edge_task_duration_seconds_count", type="train") == 2
