"""The run worker ⇄ server pipe and FedgeGrid under concurrent callers.

Real parts: a multiprocessing pipe, the worker's :class:`PipeLink`, the server's
:class:`PipeServer` with the run manager's :class:`RunEndpoint` over a real :class:`Router`, and
devices answering from their stream outboxes. Only the process boundary is left out (both ends
run in this process), which changes nothing about what crosses the pipe.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from fedge.codec import decode_message, encode_message
from fedge.errors import FedgeError
from fedge.protos.v1 import fleet_pb2
from fedge.server.grid import FedgeGrid
from fedge.server.pipe import PipeLink, PipeServer
from fedge.server.router import Router, Session
from fedge.server.runs import RunEndpoint

RUN_ID = 7
NODES = (1, 2, 3, 4, 5, 6)


@pytest.fixture(autouse=True)
def _identity() -> None:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, RUN_ID, 1


def _device(router: Router, session: Session) -> None:
    """Answer every instruction with its array doubled, after a random short delay."""
    rng = random.Random(session.node_id)
    while True:
        item = session.outbox.get()
        if item is None:
            return
        frames = [item] if isinstance(item, fleet_pb2.ServerFrame) else list(item)  # type: ignore[arg-type]
        chunks = [f.instruction for f in frames]
        msg = decode_message(b"".join(c.data for c in chunks))
        time.sleep(rng.random() * 0.005)
        arrays = ArrayRecord({"w": Array(msg.content["arrays"]["w"].numpy() * 2)})
        reply = Message(RecordDict({"arrays": arrays}), reply_to=msg)
        router.deliver(session.node_id, chunks[0].message_id, encode_message(reply))


@dataclass
class Federation:
    grid: FedgeGrid
    link: PipeLink
    events: list[tuple[int, str, dict[str, Any]]]
    server_end: Any


@pytest.fixture()
def federation() -> Iterator[Federation]:
    router = Router()
    sessions = [Session(node, f"edge-{node}", "peer") for node in NODES]
    for session in sessions:
        router.open(session)
        threading.Thread(target=_device, args=(router, session), daemon=True).start()
    worker_end, server_end = mp.Pipe()
    events: list[tuple[int, str, dict[str, Any]]] = []
    ctx = fleet_pb2.RunContext(run_id=RUN_ID, run_config_json="{}")
    endpoint = RunEndpoint(
        router, RUN_ID, ctx, lambda run, kind, data, _ctx: events.append((run, kind, data))
    )
    server = threading.Thread(target=PipeServer(server_end, endpoint).serve, daemon=True)
    server.start()
    link = PipeLink(worker_end)
    yield Federation(FedgeGrid(link, Run.create_empty(RUN_ID)), link, events, server_end)
    _hang_up(worker_end)  # as the worker process exiting does: both ends see EOF
    server.join(timeout=5)
    assert not server.is_alive()
    for session in sessions:
        session.close()


def _hang_up(conn: Any) -> None:
    """Shut the pipe's socket down, waking threads blocked reading either end (close() would not)."""
    with socket.socket(fileno=os.dup(conn.fileno())) as sock:
        sock.shutdown(socket.SHUT_RDWR)


def _message(node: int, tag: float) -> Message:
    content = RecordDict(
        {"arrays": ArrayRecord({"w": Array(np.full(64, tag, np.float32))}), "config": ConfigRecord({})}
    )
    return Message(content, node, "query", group_id="")


def _check(replies: list[Message], sent: dict[str, tuple[int, float]]) -> None:
    """Every reply answers one of ``sent``, from its node, with that message's own payload."""
    assert sorted(r.metadata.reply_to_message_id for r in replies) == sorted(sent)
    for reply in replies:
        node, tag = sent[reply.metadata.reply_to_message_id]
        assert not reply.has_error(), reply.error.reason
        assert reply.metadata.src_node_id == node
        assert np.array_equal(reply.content["arrays"]["w"].numpy(), np.full(64, 2 * tag, np.float32))


def _caller(fed: Federation, index: int, errors: list[BaseException]) -> None:
    rng = random.Random(index)
    try:
        for step in range(25):
            op = rng.choice(("nodes", "send", "push-pull", "event"))
            if op == "nodes":
                assert list(fed.grid.get_node_ids()) == list(NODES)
            elif op == "event":
                fed.link.event("log", {"caller": index, "step": step})
            else:
                nodes = rng.sample(NODES, rng.randint(1, len(NODES)))
                batch = [_message(n, index * 1000 + step * 10 + i) for i, n in enumerate(nodes)]
                tags = {
                    id(m): (m.metadata.dst_node_id, index * 1000 + step * 10 + i) for i, m in enumerate(batch)
                }
                # No reply deadlines: a slow machine must not look like a lost reply (a 30 s
                # deadline under heavy load once did). A lost reply leaves its caller blocked,
                # which the test reports after its join bound.
                if op == "send":
                    by_obj = dict(tags)
                    replies = list(fed.grid.send_and_receive(batch))
                    _check(replies, {m.metadata.message_id: by_obj[id(m)] for m in batch})
                else:
                    ids = list(fed.grid.push_messages(batch))
                    sent = {m.metadata.message_id: tags[id(m)] for m in batch}
                    assert sorted(ids) == sorted(sent)
                    replies = []
                    while len(replies) < len(ids):
                        replies += fed.grid.pull_messages(
                            [i for i in ids if i not in {r.metadata.reply_to_message_id for r in replies}]
                        )
                        time.sleep(0.002)
                    _check(replies, sent)
    except BaseException as exc:  # reported by the test thread
        errors.append(exc)


def test_many_threads_on_one_grid_each_get_their_own_replies(federation: Federation) -> None:
    errors: list[BaseException] = []
    threads = [threading.Thread(target=_caller, args=(federation, i, errors), daemon=True) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "lost reply or deadlock: callers still waiting after 300 s"
    assert not errors, errors[:3]
    assert list(federation.grid.get_node_ids()) == list(NODES)  # answered after every event before it
    # Events are one-way and in order per caller: none lost, none mangled.
    for caller in range(16):
        steps = [d["step"] for run, kind, d in federation.events if kind == "log" and d["caller"] == caller]
        assert steps == sorted(steps)
        assert all(run == RUN_ID for run, _, _ in federation.events)


@dataclass(frozen=True)
class Reboot:
    """A request no fedge version knows."""


def test_an_unknown_request_is_refused_with_a_clear_error(federation: Federation) -> None:
    with pytest.raises(FedgeError, match="unknown request 'Reboot'"):
        federation.link.call(Reboot())  # type: ignore[arg-type]
    assert list(federation.grid.get_node_ids()) == list(NODES)  # the pipe still works


def test_callers_blocked_on_a_vanished_server_fail_instead_of_hanging() -> None:
    worker_end, server_end = mp.Pipe()  # nobody serves server_end: the server process is stuck
    link = PipeLink(worker_end)
    outcome: list[BaseException | None] = []

    def wait_forever() -> None:
        try:
            link.wait(["never-answered"], None)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=wait_forever)
    waiter.start()
    time.sleep(0.2)
    assert waiter.is_alive() and not outcome
    server_end.close()  # ... and now it is gone
    waiter.join(timeout=10)
    assert not waiter.is_alive()
    assert isinstance(outcome[0], FedgeError) and "server process is gone" in outcome[0].message
    with pytest.raises(FedgeError, match="server process is gone"):
        link.node_ids()
