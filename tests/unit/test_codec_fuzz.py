"""decode_message on hostile bytes: only CodecError, and no allocation beyond what was received.

Forged inputs carry a correct checksum (computed with the codec's own function), so they reach
the validation behind it; accidental corruption is caught by the checksum itself.
"""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Iterator

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.serde import message_to_proto
from flwr.supercore.task_identity import TaskIdentity
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedge.codec import CodecError, decode_message, encode_message
from fedge.codec._format import FIXED, MAGIC, align, digest, parse_header

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 7, 0
RECORD = ArrayRecord(
    {"w": Array(np.arange(20000, dtype=np.float32).reshape(100, 200)), "n": Array(np.array(3, np.int64))}
)
MSG = Message(
    RecordDict(
        {"arrays": RECORD, "c": ConfigRecord({"sealed": bytes(70000), "x": 1}), "m": MetricRecord({"a": 1})}
    ),
    dst_node_id=5,
    message_type="train",
)
VALID = encode_message(MSG)
NPY = Array(np.zeros(3, np.float32)).data[:128].decode("latin-1")


def forge(header: object, meta: bytes, data: bytes) -> bytes:
    """Codec bytes around an arbitrary header, with the checksum a genuine encoder would write."""
    raw = json.dumps(header).encode() if not isinstance(header, bytes) else header
    used = FIXED.size + len(raw) + len(meta)
    check = digest(digest(digest(0, FIXED.pack(MAGIC, len(raw), 0, len(meta), len(data))), raw), meta)
    try:
        for _, _, specs in parse_header(memoryview(raw), len(data)):
            for s in specs:
                check = digest(check, data[s.offset : s.offset + s.nbytes])
    except CodecError:
        pass  # decode refuses it before looking at the checksum
    return (
        FIXED.pack(MAGIC, len(raw), check, len(meta), len(data))
        + raw
        + meta
        + bytes(align(used) - used)
        + data
    )


def _meta(records: dict[str, ArrayRecord | ConfigRecord | MetricRecord]) -> bytes:
    return message_to_proto(
        Message(RecordDict(records), dst_node_id=1, message_type="train")
    ).SerializeToString()


@pytest.fixture(scope="module", autouse=True)
def _traced() -> Iterator[None]:
    tracemalloc.start()
    yield
    tracemalloc.stop()


def _decode(data: bytes) -> tuple[int, CodecError | None]:
    """Peak bytes allocated while decoding (above what was live before), and the CodecError if any."""
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    try:
        decode_message(data)
        error = None
    except CodecError as exc:
        error = exc
    return tracemalloc.get_traced_memory()[1] - before, error


def _refused(data: bytes) -> None:
    peak, error = _decode(data)
    assert error is not None
    assert peak <= 4 * len(data) + (1 << 20)


def test_every_truncation_is_refused() -> None:
    for cut in [*range(0, 200), *range(len(VALID) - 100, len(VALID)), *range(200, len(VALID), 997)]:
        _refused(VALID[:cut])
    _refused(VALID + b"\x00")


@FUZZ
@given(st.integers(0, len(VALID) - 1), st.integers(1, 255))
def test_a_flipped_byte_is_caught_or_harmless(position: int, xor: int) -> None:
    data = bytearray(VALID)
    data[position] ^= xor
    try:
        back = decode_message(bytes(data))
    except CodecError:
        return
    assert message_to_proto(back) == message_to_proto(MSG)  # the byte was alignment padding
    assert back.content.array_records["arrays"] == RECORD


@FUZZ
@given(st.binary(max_size=300))
def test_garbage_after_the_magic_is_refused(tail: bytes) -> None:
    _refused(MAGIC + tail)


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=25,
)
_size = st.one_of(
    st.integers(-3, 80), st.integers(2**40, 2**80), st.booleans(), st.none(), st.text(max_size=3)
)
_prefix = st.one_of(
    st.just(""),
    st.just(NPY),
    st.text(max_size=140),
    st.builds(lambda i, c: NPY[:i] + c + NPY[i + 1 :], st.integers(0, 127), st.characters()),
)
_array_entry = st.tuples(
    st.text(max_size=3),
    st.just("float32"),
    st.lists(_size, max_size=3),
    st.just("numpy.ndarray"),
    _prefix,
    _size,
)
_entry = st.one_of(
    st.lists(st.one_of(st.text(max_size=4), _size), max_size=7),
    _array_entry.map(list),
    st.tuples(st.text(max_size=3), _size).map(list),
)
_record = st.tuples(
    st.sampled_from(["arrays", "c", "zz"]), st.sampled_from(["a", "c", "x", 1]), st.lists(_entry, max_size=3)
)


@FUZZ
@given(st.one_of(_json, st.lists(_record.map(list), max_size=3)), st.binary(max_size=200))
def test_forged_headers_are_refused_without_allocating(header: object, data: bytes) -> None:
    meta = _meta({"arrays": ArrayRecord(), "c": ConfigRecord({"x": b""})})
    raw = forge(header, meta, data)
    peak, _ = _decode(raw)  # a self-consistent forgery may decode; nothing but CodecError is raised
    assert peak <= 4 * len(raw) + (1 << 20)


@pytest.mark.parametrize(
    "header",
    [
        [["arrays", "a", [["w", "float32", [1 << 40], "numpy.ndarray", "", 1 << 50]]]],  # 1 PB tensor
        [
            [
                "arrays",
                "a",
                [
                    ["w", "float32", [3], "numpy.ndarray", NPY, 12],
                    ["w", "float32", [3], "numpy.ndarray", NPY, 12],
                ],
            ]
        ],
        [["arrays", "a", [["w", "float32", [3], "numpy.ndarray", NPY, 16]]]],  # npy says 12 bytes
        [["arrays", "a", [["w", "float32", [-1], "numpy.ndarray", "", 0]]]],
        [["arrays", "a", [["w", "float32", [True], "numpy.ndarray", "", 0]]]],
        [["arrays", "a", []], ["arrays", "a", []]],
        [["arrays", "a", [["w", "f", [], "s", "\u0100", 0]]]],
        [["other", "a", []]],  # no such ArrayRecord in the Flower part
        [],  # the Flower part's ArrayRecord is not described
        [["arrays", "a", []], ["c", "c", [["y", 0]]]],  # no b"" placeholder at "y"
        [["arrays", "a", []], ["m", "c", [["x", 0]]]],  # not a ConfigRecord
    ],
)
def test_inconsistent_headers_are_refused(header: list[object]) -> None:
    meta = _meta({"arrays": ArrayRecord(), "c": ConfigRecord({"x": b""}), "m": MetricRecord({"x": 1})})
    _refused(forge(header, meta, bytes(128)))


def test_arrays_smuggled_in_the_flower_part_are_refused() -> None:
    meta = _meta({"arrays": ArrayRecord([np.zeros(3)])})
    _refused(forge([["arrays", "a", []]], meta, b""))


def test_unparsable_flower_part_is_refused() -> None:
    _refused(forge([], b"\xff\xff\xff", b""))
