"""Edge wire helpers: reply chunking, instruction reassembly, backoff, channel policy."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from fedge.client.daemon import Backoff
from fedge.client.wire import MAX_CHUNK_BYTES, Reassembler, make_channel, reply_frames
from fedge.config import EdgeConfig
from fedge.errors import FedgeError
from fedge.protos.v1 import fleet_pb2


def _instruction_chunks(mid: str, data: bytes, size: int, run_id: int = 5) -> list[fleet_pb2.Chunk]:
    total = max(1, -(-len(data) // size))
    chunks = [
        fleet_pb2.Chunk(message_id=mid, index=i, total=total, data=data[i * size : (i + 1) * size])
        for i in range(total)
    ]
    chunks[0].run.CopyFrom(fleet_pb2.RunContext(run_id=run_id, run_config_json='{"a": 1}'))
    return chunks


@pytest.mark.parametrize("size", [0, 1, MAX_CHUNK_BYTES, MAX_CHUNK_BYTES + 1, 2 * MAX_CHUNK_BYTES + 7])
def test_reply_frames_split_and_rejoin_exactly(size: int) -> None:
    payload = os.urandom(size)
    frames = list(reply_frames("m1", payload))
    assert len(frames) == max(1, -(-size // MAX_CHUNK_BYTES))
    assert all(f.reply.message_id == "m1" and f.reply.total == len(frames) for f in frames)
    assert [f.reply.index for f in frames] == list(range(len(frames)))
    assert all(len(f.reply.data) <= MAX_CHUNK_BYTES for f in frames)
    assert all(f.ByteSize() < 4 * 1024 * 1024 for f in frames)
    assert b"".join(f.reply.data for f in frames) == payload


def test_reassembler_interleaved_messages() -> None:
    a, b = os.urandom(1000), os.urandom(2500)
    r = Reassembler()
    ca, cb = _instruction_chunks("a", a, 300), _instruction_chunks("b", b, 1000, run_id=9)
    order = [ca[0], cb[0], ca[1], cb[1], ca[2], cb[2], ca[3]]
    done = [i for i in (r.add(c) for c in order) if i is not None]
    assert [(i.message_id, i.data, i.run_id) for i in done] == [("b", b, 9), ("a", a, 5)]
    assert done[0].run_config_json == '{"a": 1}' and r.pending == 0


def test_reassembler_drops_gaps_and_keeps_going() -> None:
    r = Reassembler()
    chunks = _instruction_chunks("m", os.urandom(900), 300)
    assert r.add(chunks[0]) is None
    assert r.add(chunks[2]) is None  # gap: the message is dropped
    assert r.pending == 0
    assert r.add(chunks[1]) is None  # orphan continuation: ignored
    whole = [r.add(c) for c in _instruction_chunks("n", b"xyz", 2)]
    assert whole[-1] is not None and whole[-1].data == b"xyz"
    single = fleet_pb2.Chunk(message_id="s", index=0, total=1, data=b"q")
    got = r.add(single)
    assert got is not None and got.run_config_json is None  # no RunContext sent


def test_backoff_full_jitter_and_reset() -> None:
    b = Backoff(0.25, 5.0, random.Random(1))
    ceilings = [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    for ceiling in ceilings:
        assert 0.0 <= b.next() <= ceiling
    samples = [Backoff(0.25, 5.0, random.Random(s)) for s in range(200)]
    for s in samples:
        for _ in range(10):
            s.next()
    late = [s.next() for s in samples]
    assert max(late) <= 5.0 and min(late) < 1.0  # jittered over the whole range, capped
    b.reset()
    assert b.next() <= 0.25


def test_make_channel_requires_enrollment_or_explicit_loopback_plaintext(tmp_path: Path) -> None:
    with pytest.raises(FedgeError, match="not enrolled") as info:
        make_channel(EdgeConfig(server="127.0.0.1:1", state_dir=str(tmp_path)))
    assert "fedge client enroll" in info.value.hint
    with pytest.raises(FedgeError, match="non-loopback"):
        make_channel(EdgeConfig(server="example.org:443", insecure=True))
    make_channel(EdgeConfig(server="localhost:1", insecure=True)).close()
