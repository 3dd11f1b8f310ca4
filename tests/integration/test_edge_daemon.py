"""The edge daemon in-process against a fake Fleet server (real gRPC on 127.0.0.1)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from flwr.common.constant import ErrorCode

from fedge.client.daemon import EdgeDaemon
from fedge.client.runtime import load_client_app
from fedge.client.wire import MAX_CHUNK_BYTES
from fedge.config import EdgeConfig
from fedge.errors import FedgeError

from .edge_fakes import FakeFleet, make_instruction, wait_for

APP = load_client_app("tests.integration.edge_test_app:app")
RUN = 1234567


class Running:
    """An EdgeDaemon on a background thread, stopped (and joined) by the test fixture."""

    def __init__(self, daemon: EdgeDaemon) -> None:
        self.daemon = daemon
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.daemon.run_forever()
        except BaseException as exc:
            self.error = exc

    def stop(self, timeout: float = 10) -> None:
        self.daemon.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "daemon did not stop"


@pytest.fixture
def fleet() -> Iterator[FakeFleet]:
    server = FakeFleet().start()
    yield server
    server.stop()


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator:
    started: list[Running] = []

    def start(address: str, **kwargs: object) -> Running:
        cfg = EdgeConfig(
            server=address,
            name="edge-1",
            state_dir=str(tmp_path / "edge"),
            insecure=True,
            node_config={"partition-id": 3},
        )
        running = Running(EdgeDaemon(cfg, APP, **kwargs))  # type: ignore[arg-type]
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


def _train(node_id: int, arrays: ArrayRecord | None = None):
    arrays = arrays or ArrayRecord({"w": Array(np.arange(4, dtype=np.float32))})
    return make_instruction(RecordDict({"arrays": arrays}), node_id, "train", RUN)


def test_hello_welcome_and_heartbeats(tmp_path: Path, start_daemon) -> None:
    server = FakeFleet(heartbeat_interval=0.05).start()
    try:
        run = start_daemon(server.address)
        stream = server.wait_streams(1, 10)
        assert stream.hello.name == "edge-1" and "chunks-v1" in stream.hello.capabilities
        assert run.daemon.wait_connected(10) and run.daemon.node_id == server.node_id
        server.wait_heartbeats(3, 10)
    finally:
        server.stop()


def test_multi_chunk_round_trip(fleet: FakeFleet, start_daemon) -> None:
    big = np.random.default_rng(0).standard_normal(1_500_000).astype(np.float32)  # 6 MB
    run = start_daemon(fleet.address)
    assert run.daemon.wait_connected(10)
    msg = _train(fleet.node_id, ArrayRecord({"w": Array(big), "b": Array(np.ones(3, np.int64))}))
    mid = fleet.send(msg, {"lr": 0.1})
    reply = fleet.wait_reply(mid, 20)
    assert not reply.has_error(), reply.error if reply.has_error() else None
    out = reply.content["arrays"]
    assert np.array_equal(out["w"].numpy(), big) and out["w"].numpy().dtype == np.float32
    assert np.array_equal(out["b"].numpy(), np.ones(3, np.int64))
    assert reply.metadata.reply_to_message_id == msg.metadata.message_id
    assert reply.metadata.dst_node_id == msg.metadata.src_node_id
    chunks = [c for c in fleet.reply_chunks if c.message_id == mid]
    assert len(chunks) == 2 and all(len(c.data) <= MAX_CHUNK_BYTES for c in chunks)
    assert [c.index for c in chunks] == [0, 1] and {c.total for c in chunks} == {2}


def test_run_and_node_config_reach_the_app(fleet: FakeFleet, start_daemon) -> None:
    run = start_daemon(fleet.address)
    assert run.daemon.wait_connected(10)
    mid = fleet.send(
        make_instruction(RecordDict({"q": ConfigRecord({})}), fleet.node_id, "query", RUN),
        {"lr": 0.5, "mode": "x", "flag": True},
    )
    report = fleet.wait_reply(mid).content["report"]
    assert report["run.lr"] == 0.5 and report["run.mode"] == "x" and report["run.flag"] is True
    assert report["node.partition-id"] == 3 and report["node-id"] == str(fleet.node_id)


def test_context_state_survives_daemon_restart(fleet: FakeFleet, start_daemon, tmp_path: Path) -> None:
    first = start_daemon(fleet.address)
    assert first.daemon.wait_connected(10)
    for expected in (1, 2):
        reply = fleet.wait_reply(fleet.send(_train(fleet.node_id)))
        assert reply.content["metrics"]["calls"] == expected
    first.stop()
    assert (tmp_path / "edge" / "runs" / str(RUN) / "context.pb").is_file()

    second = start_daemon(fleet.address)
    assert second.daemon.wait_connected(10)
    fleet.wait_streams(2, 10)
    reply = fleet.wait_reply(fleet.send(_train(fleet.node_id)))
    assert reply.content["metrics"]["calls"] == 3


def test_app_exception_gives_error_reply_and_daemon_keeps_serving(fleet: FakeFleet, start_daemon) -> None:
    run = start_daemon(fleet.address)
    assert run.daemon.wait_connected(10)
    msg = make_instruction(RecordDict({"q": ConfigRecord({})}), fleet.node_id, "evaluate", RUN)
    reply = fleet.wait_reply(fleet.send(msg))
    assert reply.has_error() and reply.error.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION
    assert "boom in evaluate" in (reply.error.reason or "")
    assert reply.metadata.reply_to_message_id == msg.metadata.message_id
    unknown = make_instruction(RecordDict(), fleet.node_id, "train.nope", RUN)
    assert fleet.wait_reply(fleet.send(unknown)).has_error()
    reply = fleet.wait_reply(fleet.send(_train(fleet.node_id)))
    assert not reply.has_error() and reply.content["metrics"]["calls"] == 1
    assert run.daemon.tasks_done == 3 and run.error is None


def test_reconnects_after_server_restart(start_daemon) -> None:
    first = FakeFleet().start()
    run = start_daemon(first.address)
    assert run.daemon.wait_connected(10)
    port = first.port
    first.stop()
    second = FakeFleet(port=port).start()
    restarted = time.monotonic()
    try:
        assert run.daemon.wait_connected(10, count=2), "daemon did not come back within 10 s"
        assert time.monotonic() - restarted < 10
        second.wait_streams(1, 1)
        reply = second.wait_reply(second.send(_train(second.node_id)))
        assert not reply.has_error()
        assert run.error is None
    finally:
        second.stop()


def test_silent_server_is_treated_as_dead(start_daemon) -> None:
    server = FakeFleet(heartbeat_interval=0.1, send_heartbeats=False).start()
    try:
        run = start_daemon(server.address)
        assert run.daemon.wait_connected(10, count=2), "no reconnect after 3 silent intervals"
    finally:
        server.stop()


def test_stop_lets_running_task_finish_and_reply(fleet: FakeFleet, start_daemon, tmp_path: Path) -> None:
    run = start_daemon(fleet.address)
    assert run.daemon.wait_connected(10)
    started, release = tmp_path / "started", tmp_path / "release"
    mid = fleet.send(
        make_instruction(RecordDict(), fleet.node_id, "train.slow", RUN),
        {"started-file": str(started), "release-file": str(release)},
    )
    wait_for(started.exists, 10, "the task to start")
    run.daemon.stop()
    assert not fleet.replied(mid)
    release.touch()
    run.thread.join(10)
    assert not run.thread.is_alive() and run.error is None
    assert not fleet.wait_reply(mid, 1).has_error()
    assert fleet.streams[-1].ended.wait(5)


def test_max_wait_gives_up_with_fedge_error(start_daemon) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run = start_daemon(f"127.0.0.1:{port}", max_wait=1.0)
    run.thread.join(10)
    assert isinstance(run.error, FedgeError) and "could not connect" in run.error.message


def test_plaintext_to_non_loopback_is_refused(tmp_path: Path) -> None:
    cfg = EdgeConfig(server="192.0.2.10:9092", insecure=True, state_dir=str(tmp_path))
    with pytest.raises(FedgeError, match="non-loopback"):
        EdgeDaemon(cfg, APP)
    with pytest.raises(FedgeError, match="no TLS"):
        EdgeDaemon(EdgeConfig(server="127.0.0.1:9092", state_dir=str(tmp_path)), APP)


def test_instructions_queue_while_a_task_runs(fleet: FakeFleet, start_daemon) -> None:
    run = start_daemon(fleet.address)
    assert run.daemon.wait_connected(10)
    mids = [fleet.send(_train(fleet.node_id)) for _ in range(4)]  # pushed without waiting
    calls = [fleet.wait_reply(mid).content["metrics"]["calls"] for mid in mids]
    assert calls == [1, 2, 3, 4]  # one at a time, in arrival order, state shared across them
