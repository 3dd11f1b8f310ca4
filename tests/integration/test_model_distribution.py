"""The real server distributing bundles to real daemons (in-process, plaintext, unsigned bundles).

Connected daemons get a new bundle when it is published; daemons that connect later get the
latest one; the latest survives a server restart; installs are in the server's audit log.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from fedge.client.daemon import EdgeDaemon
from fedge.client.runtime import load_client_app
from fedge.config import EdgeConfig, ServerConfig
from fedge.export import export_bundle
from fedge.protos.v1 import inference_pb2, inference_pb2_grpc
from fedge.server.service import FedgeServer
from tests.model_runs import make_run_dir

from .edge_fakes import wait_for

APP = load_client_app("tests.integration.edge_test_app:app")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("bundles")
    run_dir = make_run_dir(root, rounds=2)
    return [export_bundle(run_dir, r, root / f"r{r}").bundle_dir for r in (1, 2)]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[FedgeServer]:
    srv = FedgeServer(ServerConfig(address="127.0.0.1:0", state_dir=str(tmp_path / "server"), insecure=True))
    srv.start()
    yield srv
    srv.stop(grace=0)


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator:
    started: list[tuple[EdgeDaemon, threading.Thread]] = []

    def start(address: str, name: str) -> EdgeDaemon:
        cfg = EdgeConfig(server=address, name=name, state_dir=str(tmp_path / name), insecure=True)
        edge = EdgeDaemon(cfg, APP)  # type: ignore[arg-type]
        thread = threading.Thread(target=edge.run_forever, daemon=True)
        thread.start()
        started.append((edge, thread))
        assert edge.wait_connected(10)
        return edge

    yield start
    for edge, thread in started:
        edge.stop()
        thread.join(10)


def _served(edge: EdgeDaemon) -> str:
    assert edge.inference is not None
    with grpc.insecure_channel(edge.inference.bound) as channel:
        stub = inference_pb2_grpc.EdgeInferenceStub(channel)
        return stub.ModelInfo(inference_pb2.ModelInfoRequest(), timeout=5).version


def test_publish_reaches_connected_and_late_daemons(server: FedgeServer, start_daemon, bundles) -> None:
    v1 = server.models.publish(bundles[0]).version
    early = start_daemon(server.address, "early")  # connects after the publish: offered on connect
    wait_for(lambda: _served(early) == v1, 20, "early to serve v1")
    v2 = server.models.publish(bundles[1]).version  # announced to the connected daemon
    wait_for(lambda: _served(early) == v2, 20, "early to switch to v2")
    late = start_daemon(server.address, "late")
    wait_for(lambda: _served(late) == v2, 20, "late to serve the latest")
    assert not (Path(late.cfg.state_dir) / "models" / v1).exists()  # only the latest was fetched
    events = [json.loads(line) for line in (server.state_dir / "audit.jsonl").read_text().splitlines()]
    installed = {(e["node"], e["version"]) for e in events if e["event"] == "model-installed"}
    assert {("early", v1), ("early", v2), ("late", v2)} <= installed
    assert [e["version"] for e in events if e["event"] == "model-published"] == [v1, v2]


def test_the_latest_bundle_survives_a_server_restart(tmp_path: Path, bundles) -> None:
    cfg = ServerConfig(address="127.0.0.1:0", state_dir=str(tmp_path / "server"), insecure=True)
    first = FedgeServer(cfg)
    version = first.models.publish(bundles[1]).version
    first.stop(grace=0)
    second = FedgeServer(cfg)
    try:
        assert second.models.latest is not None and second.models.latest.version == version
    finally:
        second.stop(grace=0)


def test_a_bad_export_setting_is_refused_before_the_run_starts(server: FedgeServer) -> None:
    from fedge.errors import FedgeError
    from fedge.server.control_client import ControlClient

    client = ControlClient(server.address)
    try:
        with pytest.raises(FedgeError, match="invalid export setting 'sometimes'"):
            client.start_run("fedge.server.app:app", {"task": "digits", "export": "sometimes"}, ".")
        assert client.list_runs() == []
    finally:
        client.close()
