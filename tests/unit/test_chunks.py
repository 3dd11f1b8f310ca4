"""Chunk split/assembly and the frame limits that keep a hostile peer from exhausting memory."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedge.chunks import Assembler, ChunkError, FrameLimits, InflightBudget, split


@pytest.mark.parametrize("size", [0, 1, 10, 11, 35])
def test_split_then_assemble_round_trips(size: int) -> None:
    data = bytes(range(256)) * 2
    data = data[:size]
    asm = Assembler()
    out = [asm.add("m", i, t, piece) for i, t, piece in split(data, limit=10)]
    assert out[-1] == data and all(o is None for o in out[:-1]) and asm.pending == 0


@pytest.mark.parametrize(
    ("feed", "reason"),
    [
        ([("m", 1, 2, b"x")], "out-of-order"),
        ([("m", 0, 3, b"x"), ("m", 2, 3, b"x")], "out-of-order"),
        ([("m", 0, 3, b"x"), ("m", 1, 4, b"x")], "out-of-order"),
        ([("m", 0, 0, b"")], "chunk-count"),
        ([("m", 0, 10**9, b"")], "chunk-count"),
        ([("m", 0, 2, b"x" * 90), ("m", 1, 2, b"x" * 20)], "message-size"),
        ([("a", 0, 2, b"x" * 60), ("b", 0, 2, b"x" * 60)], "inflight-bytes"),
        ([("a", 0, 2, b""), ("b", 0, 2, b""), ("c", 0, 2, b"")], "inflight-messages"),
    ],
)
def test_violations_are_named(feed: list[tuple[str, int, int, bytes]], reason: str) -> None:
    asm = Assembler(
        FrameLimits(max_message_bytes=100, max_inflight_bytes=100, max_inflight_messages=2, max_chunks=8)
    )
    with pytest.raises(ChunkError) as info:
        for chunk in feed:
            asm.add(*chunk)
    assert info.value.reason == reason


chunks = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c"]), st.integers(-2, 6), st.integers(-2, 6), st.binary(max_size=64)
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(chunks)
def test_random_chunk_streams_only_ever_raise_chunk_errors_and_stay_bounded(feed: list) -> None:
    limits = FrameLimits(max_message_bytes=128, max_inflight_bytes=200, max_inflight_messages=2, max_chunks=8)
    asm = Assembler(limits)
    for message_id, index, total, data in feed:
        try:
            out = asm.add(message_id, index, total, data)
        except ChunkError:
            continue
        assert out is None or len(out) <= limits.max_message_bytes
        assert asm._inflight <= limits.max_inflight_bytes and asm.pending <= limits.max_inflight_messages


@settings(max_examples=200, deadline=None)
@given(chunks, chunks)
def test_the_global_budget_bounds_all_peers_and_is_returned_in_full(first: list, second: list) -> None:
    limits = FrameLimits(max_message_bytes=128, max_inflight_bytes=200, max_inflight_messages=2, max_chunks=8)
    budget = InflightBudget(150)
    peers = [Assembler(limits, budget), Assembler(limits, budget)]
    for step in range(max(len(first), len(second))):
        for asm, feed in zip(peers, (first, second), strict=True):
            if step < len(feed):
                try:
                    asm.add(*feed[step])
                except ChunkError:
                    pass
            assert budget.used == sum(a._inflight for a in peers) <= budget.max_bytes
    for asm in peers:
        asm.clear()
    assert budget.used == 0 and all(a.pending == 0 for a in peers)


def test_a_peer_past_the_global_budget_is_a_violation() -> None:
    budget = InflightBudget(100)
    Assembler(budget=budget).add("a", 0, 2, b"x" * 80)
    with pytest.raises(ChunkError) as info:
        Assembler(budget=budget).add("b", 0, 2, b"x" * 40)
    assert info.value.reason == "global-inflight" and budget.used == 80
