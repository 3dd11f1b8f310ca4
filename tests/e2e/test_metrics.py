"""Prometheus /metrics of a real server and two real daemons after a real federation.

Everything runs as the operator would: ``fedge server start`` and ``fedge client start`` processes
(mTLS, sealed updates) with ``--metrics-address 127.0.0.1:0``, ``fedge run start`` from the CLI,
and both endpoints scraped over HTTP and parsed with prometheus_client's own parser.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fedge.client.data import write_partitions
from fedge.sim.local import LocalFederation
from fedge.tasks import load_task
from tests.conftest import fedge_cli

pytestmark = pytest.mark.e2e

METRICS = ["--metrics-address", "127.0.0.1:0"]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(state_dir: Path) -> Samples:
    """Every sample of the endpoint whose address ``state_dir/metrics_address`` holds."""
    address = (state_dir / "metrics_address").read_text().strip()
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    assert key in samples, f"{name}{labels} not exposed; have {sorted(n for n, _ in samples if 'fedge' in n)}"
    return samples[key]


def labelled(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def wait_for_models(states: list[Path], timeout: float = 30.0) -> list[str]:
    """The active model version of each daemon, once every one has installed the run's bundle."""
    deadline = time.monotonic() + timeout
    files = [s / "models" / "active.json" for s in states]
    while not all(f.exists() for f in files):
        assert time.monotonic() < deadline, "the final model never reached every daemon"
        time.sleep(0.1)
    return [json.loads(f.read_text())["version"] for f in files]


def run(federation: LocalFederation, *args: str) -> str:
    done = fedge_cli(
        "run", "start", "--server", federation.address, *federation.auth, "--task", "digits", *args
    )
    return done.stderr if done.returncode == 0 else f"exit {done.returncode}: {done.stderr}"


def test_server_and_daemon_metrics_after_a_run(federation: LocalFederation) -> None:
    federation.start_server(METRICS)
    server = federation.workdir / "server"
    edges = [federation.workdir / f"edge-{i}" for i in range(2)]
    paths = write_partitions(load_task("digits"), 2, "iid", 0, edges)
    for edge, path in zip(edges, paths, strict=True):
        federation.start_daemon(edge.name, ["--data", str(path), *METRICS])
    federation.wait_for_nodes(2)

    out = run(federation, "--rounds", "2", "--min-clients", "2", "--set", "local-epochs=1")
    assert "finished" in out, out
    versions = wait_for_models(edges)

    srv = scrape(server)
    assert value(srv, "fedge_server_nodes_connected") == 2
    assert value(srv, "fedge_server_node_connections_total") == 2
    assert value(srv, "fedge_server_rounds_completed_total") == 2
    assert value(srv, "fedge_server_round_duration_seconds_count") == 2
    assert 0 < value(srv, "fedge_server_round_duration_seconds_sum") < 60
    assert value(srv, "fedge_server_run_failures_total") == 0
    assert labelled(srv, "fedge_server_updates_rejected_total") == {}
    runs = {dict(k)["state"]: v for k, v in labelled(srv, "fedge_server_runs").items()}
    assert runs == {"pending": 0, "running": 0, "finished": 1, "failed": 0, "stopped": 0, "interrupted": 0}

    daemons = [scrape(edge) for edge in edges]
    for d, version in zip(daemons, versions, strict=True):
        assert value(d, "fedge_edge_tasks_total", type="train", outcome="ok") == 2
        assert value(d, "fedge_edge_tasks_total", type="evaluate", outcome="ok") == 2
        assert value(d, "fedge_edge_tasks_total", type="train", outcome="error") == 0
        assert value(d, "fedge_edge_tasks_total", type="other", outcome="undecodable") == 0
        assert value(d, "fedge_edge_task_duration_seconds_count", type="train") == 2
        assert value(d, "fedge_edge_task_duration_seconds_sum", type="train") > 0
        assert value(d, "fedge_edge_reconnects_total") == 0
        assert value(d, "fedge_edge_connected") == 1
        assert value(d, "fedge_edge_active_model_info", version=version, pinned="false") == 1
        assert value(d, "fedge_edge_fleet_sent_bytes_total") > 10_000  # two sealed model updates at least
    # Both ends count protobuf frame sizes: what the daemons sent is what the server received
    # (give or take a heartbeat in flight during the scrapes), and the other way round.
    sent = sum(value(d, "fedge_edge_fleet_sent_bytes_total") for d in daemons)
    received = sum(value(d, "fedge_edge_fleet_received_bytes_total") for d in daemons)
    assert abs(value(srv, "fedge_server_fleet_received_bytes_total") - sent) <= 200 + 0.001 * sent
    assert abs(value(srv, "fedge_server_fleet_sent_bytes_total") - received) <= 200 + 0.001 * received

    # A bound no real update meets: both updates are rejected (reason "norm"), the run fails.
    out = run(federation, "--rounds", "1", "--min-clients", "2", "--set", "max-update-norm=1e-9")
    assert out.startswith("exit 1"), out
    srv = scrape(server)
    assert labelled(srv, "fedge_server_updates_rejected_total") == {frozenset({("reason", "norm")}): 2}
    assert value(srv, "fedge_server_run_failures_total") == 1
    assert value(srv, "fedge_server_runs", state="failed") == 1
    assert value(srv, "fedge_server_rounds_completed_total") == 2  # a failed round is not completed
    for edge in edges:  # the daemons trained fine; the server refused what they sent
        assert value(scrape(edge), "fedge_edge_tasks_total", type="train", outcome="ok") == 3
