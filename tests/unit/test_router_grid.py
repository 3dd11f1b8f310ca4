"""Router and FedgeGrid: replies, vanished nodes, timeouts and the sampling deadline."""

from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from fedge.chunks import CHUNK_BYTES
from fedge.codec import decode_message, encode_message
from fedge.errors import FedgeError
from fedge.protos.v1 import fleet_pb2
from fedge.server.grid import FedgeGrid
from fedge.server.router import Router, Session, chunk_frames

RUN = fleet_pb2.RunContext(run_id=7, run_config_json="{}")


@pytest.fixture(autouse=True)
def _identity() -> None:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 7, 1


class RouterLink:
    """The grid's link, straight onto a router (what the worker pipe does across processes)."""

    def __init__(self, router: Router) -> None:
        self.router = router

    def node_ids(self) -> list[int]:
        return self.router.node_ids()

    def push(self, items: list[tuple[str, int, bytes]], round: int, announcement: bytes) -> None:
        self.router.push(fleet_pb2.RunContext(run_id=7, round=round, announcement=announcement), items)

    def wait(self, ids: list[str], timeout: float | None, first: bool = False):  # type: ignore[no-untyped-def]
        return self.router.wait(ids, timeout, first)


def instruction_chunks(session: Session) -> list[fleet_pb2.Chunk]:
    """The next instruction queued on a device's stream, as the stream writer would send it."""
    item = session.outbox.get(timeout=5)
    frames = [item] if isinstance(item, fleet_pb2.ServerFrame) else list(item)  # type: ignore[arg-type]
    return [f.instruction for f in frames]


def _answer(router: Router, session: Session, scale: float) -> None:
    """Act as the device: reassemble the instruction and reply with its arrays scaled."""
    frames = instruction_chunks(session)
    assert len(frames) == frames[0].total
    msg = decode_message(b"".join(f.data for f in frames))
    arrays = msg.content["arrays"]["w"].numpy() * scale
    reply = Message(RecordDict({"arrays": ArrayRecord({"w": Array(arrays)})}), reply_to=msg)
    router.deliver(session.node_id, frames[0].message_id, encode_message(reply))


def _message(dst: int, size: int = 4) -> Message:
    content = RecordDict(
        {"arrays": ArrayRecord({"w": Array(np.ones(size, np.float32))}), "config": ConfigRecord({})}
    )
    return Message(content, dst, "train", group_id="1")


def test_replies_and_vanished_node_end_the_round_without_waiting() -> None:
    router = Router()
    alive, gone = Session(2, "a", "p"), Session(3, "b", "p")
    router.open(alive)
    router.open(gone)
    grid = FedgeGrid(RouterLink(router), Run.create_empty(7))
    threading.Thread(target=_answer, args=(router, alive, 2.0), daemon=True).start()
    threading.Timer(0.2, router.close, args=(gone, "node disconnected")).start()
    replies = list(grid.send_and_receive([_message(2), _message(3)], timeout=60))
    by_src = {r.metadata.src_node_id: r for r in replies}
    assert np.array_equal(by_src[2].content["arrays"]["w"].numpy(), np.full(4, 2.0, np.float32))
    assert by_src[3].has_error() and "disconnected" in by_src[3].error.reason
    assert by_src[3].metadata.reply_to_message_id and by_src[3].metadata.group_id == "1"


def test_message_to_unknown_node_fails_immediately_and_timeout_returns_partial() -> None:
    router = Router()
    silent = Session(2, "a", "p")
    router.open(silent)
    grid = FedgeGrid(RouterLink(router), Run.create_empty(7))
    replies = list(grid.send_and_receive([_message(99), _message(2)], timeout=0.3))
    assert len(replies) == 1 and replies[0].has_error() and "not connected" in replies[0].error.reason


class LateLink(RouterLink):
    """A link on which the reply lands just after the caller's last wait timed out."""

    def __init__(self, router: Router, node: Session) -> None:
        super().__init__(router)
        self.node = node

    def wait(self, ids: list[str], timeout: float | None, first: bool = False):  # type: ignore[no-untyped-def]
        if first:  # the deadline passes with nothing in...
            self.router.wait(ids, timeout, first)
            _answer(self.router, self.node, 5.0)  # ...and the reply arrives right after
            return {}
        return self.router.wait(ids, timeout, first)


def test_a_reply_that_arrives_as_the_deadline_passes_reaches_the_caller() -> None:
    router = Router()
    node = Session(2, "a", "p")
    router.open(node)
    grid = FedgeGrid(LateLink(router, node), Run.create_empty(7))
    (reply,) = grid.send_and_receive([_message(2)], timeout=0.05)
    assert float(reply.content["arrays"]["w"].numpy()[0]) == 5.0


def test_large_messages_are_chunked_and_reassembled() -> None:
    router = Router()
    node = Session(2, "a", "p")
    router.open(node)
    grid = FedgeGrid(RouterLink(router), Run.create_empty(7))
    size = (3 * CHUNK_BYTES) // 4  # > 2 chunks of float32
    threading.Thread(target=_answer, args=(router, node, 3.0), daemon=True).start()
    (reply,) = grid.send_and_receive([_message(2, size)], timeout=30)
    assert reply.content["arrays"]["w"].numpy().shape == (size,)
    assert float(reply.content["arrays"]["w"].numpy()[-1]) == 3.0
    frames = list(chunk_frames("m", b"x" * (2 * CHUNK_BYTES + 1), RUN))
    assert [f.instruction.index for f in frames] == [0, 1, 2] and frames[0].instruction.run.run_id == 7
    assert not frames[1].instruction.HasField("run")


def test_sampling_wait_is_bounded() -> None:
    grid = FedgeGrid(RouterLink(Router()), Run.create_empty(7), node_wait_timeout=0.0)
    list(grid.get_node_ids())
    with pytest.raises(FedgeError, match="waited 0 s for enough edge nodes; 0 connected"):
        list(grid.get_node_ids())


def test_reconnect_replaces_the_old_stream_and_fails_its_work() -> None:
    router = Router()
    first = Session(2, "a", "p")
    router.open(first)
    router.push(RUN, [("m1", 2, b"payload")])
    router.open(Session(2, "a", "p2"))
    outcome = router.wait(["m1"], 1)["m1"]
    assert outcome.data is None and "reconnected" in outcome.reason
    assert first.closed.is_set()
    assert not router.deliver(2, "m1", b"late")  # a late reply to lost work is dropped


def test_a_broadcast_crosses_the_pipe_and_waits_in_the_router_as_one_copy_of_the_model() -> None:
    # What a run worker sends the server process for one round to 40 devices (PipeLink pickles).
    router, sent = Router(), []
    for node in range(1, 41):
        router.open(Session(node, f"n{node}", "p"))

    class PipeLike(RouterLink):
        def push(self, items, round, announcement):  # type: ignore[no-untyped-def]
            sent.append(pickle.dumps(items))
            super().push(pickle.loads(sent[-1]), round, announcement)

    model = ArrayRecord({"w": Array(np.random.default_rng(0).normal(size=1_000_000).astype(np.float32))})
    shared = RecordDict({"arrays": model, "config": ConfigRecord({})})  # as Flower's FedAvg does
    grid = FedgeGrid(PipeLike(router), Run.create_empty(7))
    grid.push_messages([Message(shared, node, "train", group_id="1") for node in range(1, 41)])
    assert len(sent[0]) < 1.1 * 4_000_000, "the model must cross the pipe once, not once per device"
    # Each device still gets the whole message, chunked lazily by its stream writer.
    for node in (1, 40):
        chunks = instruction_chunks(router.session(node))  # type: ignore[arg-type]
        msg = decode_message(b"".join(c.data for c in chunks))
        assert msg.metadata.dst_node_id == node
        assert np.array_equal(msg.content["arrays"]["w"].numpy(), model["w"].numpy())


@pytest.mark.parametrize("size", [1000, 2 * CHUNK_BYTES + 1])
def test_a_broadcast_gives_every_device_the_whole_message_under_its_own_id(size: int) -> None:
    """One data object pushed to several devices, of one chunk or several: each stream sends all
    of it, its own id on every chunk."""
    router = Router()
    nodes = [Session(n, f"n{n}", "p") for n in (2, 3, 4)]
    for node in nodes:
        router.open(node)
    payload = [b"a" * (size // 2), b"b" * (size - size // 2)]  # codec frames, as the worker sends
    router.push(RUN, [(f"m{node.node_id}", node.node_id, payload) for node in nodes])
    for node in nodes:
        chunks = instruction_chunks(node)
        assert {c.message_id for c in chunks} == {f"m{node.node_id}"}
        assert [c.index for c in chunks] == list(range(chunks[0].total))
        assert b"".join(c.data for c in chunks) == b"".join(payload)
        assert chunks[0].run.run_id == 7 and not any(c.HasField("run") for c in chunks[1:])
