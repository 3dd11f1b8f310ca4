"""The wire codec round-trips every Flower Message exactly, and stock Flower code sees ordinary records."""

from __future__ import annotations

import os
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.common.serde import context_from_proto, context_to_proto, message_from_proto, message_to_proto
from flwr.supercore.task_identity import TaskIdentity
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedge.chunks import split
from fedge.codec import (
    CodecError,
    array_from_numpy,
    array_view,
    decode_message,
    encode_frames,
    encode_message,
)

DTYPES = [
    "?",
    "i1",
    "u1",
    "<i2",
    "<u2",
    "<i4",
    "<u4",
    "<i8",
    "<u8",
    "<f2",
    "<f4",
    "<f8",
    "<c8",
    "<c16",
    ">f4",
    ">i8",
]
PROP = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(autouse=True)
def _identity() -> None:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 7, 0


def _arrays(max_arrays: int = 4) -> st.SearchStrategy[list[np.ndarray]]:
    shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6)
    one = st.sampled_from(DTYPES).flatmap(lambda d: hnp.arrays(np.dtype(d), shapes))
    fortran = st.booleans()
    return st.lists(st.tuples(one, fortran), max_size=max_arrays).map(
        lambda items: [np.asfortranarray(a) if f else a for a, f in items]
    )


def _config_values() -> st.SearchStrategy[Any]:
    scalar = st.one_of(
        st.integers(-(2**63), 2**63 - 1),
        st.floats(allow_nan=False),
        st.text(max_size=20),
        st.booleans(),
        st.binary(max_size=40),
        st.binary(min_size=1 << 16, max_size=(1 << 16) + 9),  # travels beside the tensors
    )
    return st.one_of(scalar, st.lists(st.integers(-5, 5), max_size=4))


@st.composite
def messages(draw: st.DrawFn) -> Message:
    records: dict[str, ArrayRecord | ConfigRecord | MetricRecord] = {}
    for i in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["arrays", "config", "metrics"]))
        key = f"{kind}-{i}"
        if kind == "arrays":
            arrays = draw(_arrays())
            records[key] = ArrayRecord({f"a{j}.w": Array(a) for j, a in enumerate(arrays)})
        elif kind == "config":
            records[key] = ConfigRecord(
                draw(st.dictionaries(st.text(max_size=8), _config_values(), max_size=3))
            )
        else:
            values: st.SearchStrategy[Any] = st.one_of(st.floats(allow_nan=False), st.integers(-100, 100))
            records[key] = MetricRecord(draw(st.dictionaries(st.text(max_size=8), values, max_size=3)))
    msg = Message(RecordDict(records), dst_node_id=draw(st.integers(0, 2**63)), message_type="train")
    msg.metadata.__dict__["_message_id"] = draw(st.text(max_size=40))
    return msg


def _same(a: Message, b: Message) -> None:
    """Equal as Flower's own serde sees them, and every Array byte-for-byte."""
    assert message_to_proto(a) == message_to_proto(b)
    if a.has_content():
        assert list(a.content.keys()) == list(b.content.keys())
        for key, record in a.content.items():
            assert type(b.content[key]) is type(record)
            assert list(b.content[key].items()) == list(record.items())


@PROP
@given(messages())
def test_round_trip_is_exact(msg: Message) -> None:
    before = message_to_proto(msg)
    back = decode_message(encode_message(msg))
    _same(back, msg)
    assert message_to_proto(msg) == before  # encoding leaves the sender's message untouched


@PROP
@given(messages(), st.integers(1, 5000))
def test_frames_chunk_without_joining(msg: Message, limit: int) -> None:
    frames = encode_frames(msg)
    pieces = [piece for _, _, piece in split(frames, limit)]
    assert all(len(p) <= limit for p in pieces)
    assert b"".join(pieces) == encode_message(msg)
    _same(decode_message(b"".join(pieces)), msg)


@PROP
@given(_arrays(max_arrays=6))
def test_decoded_arrays_are_flower_arrays(arrays: list[np.ndarray]) -> None:
    record = ArrayRecord(arrays)
    msg = Message(RecordDict({"arrays": record}), dst_node_id=1, message_type="train")
    got = decode_message(encode_message(msg)).content.array_records["arrays"]
    assert got == record
    for a, b, original in zip(got.to_numpy_ndarrays(), record.to_numpy_ndarrays(), arrays, strict=True):
        assert a.dtype == b.dtype == original.dtype and a.shape == original.shape
        assert (
            a.tobytes(order="A") == original.tobytes(order="A")
            and a.flags.f_contiguous == b.flags.f_contiguous
        )
    for array in got.values():
        assert type(array.data) is bytes  # what Flower's serde and Context persistence require
        view = array_view(array)
        assert not view.flags.writeable and view.tobytes() == array.numpy().tobytes()


def test_torch_state_dict_round_trip() -> None:
    state = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.BatchNorm1d(5)).state_dict()
    msg = Message(RecordDict({"arrays": ArrayRecord(state)}), dst_node_id=1, message_type="train")
    got = decode_message(encode_message(msg)).content.array_records["arrays"].to_torch_state_dict()
    assert list(got) == list(state)
    for name, tensor in state.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor)


def test_bfloat16_and_opaque_arrays_travel_as_flower_has_them() -> None:
    """Flower stores ml_dtypes bfloat16 as npy '<V2'; a foreign stype is opaque bytes: both kept exactly."""
    record = ArrayRecord(
        {
            "bf16": Array(np.arange(6, dtype=ml_dtypes.bfloat16).reshape(2, 3)),
            "opaque": Array(dtype="float32", shape=(2,), stype="my.codec", data=os.urandom(11)),
            "fake-npy": Array(
                dtype="float32", shape=(9,), stype="numpy.ndarray", data=b"\x93NUMPY\x01\x00garbage"
            ),
        }
    )
    msg = Message(RecordDict({"r": record}), dst_node_id=1, message_type="train")
    assert decode_message(encode_message(msg)).content.array_records["r"] == record


def test_errors_and_replies_are_preserved() -> None:
    instruction = Message(
        RecordDict({"c": ConfigRecord({"lr": 0.1})}), dst_node_id=3, message_type="evaluate"
    )
    instruction.metadata.__dict__["_message_id"] = "m-1"
    failed = Message(Error(code=3, reason="ClientApp raised: boom"), reply_to=instruction)
    back = decode_message(encode_message(failed))
    assert back.has_error() and not back.has_content()
    assert back.error.code == 3 and back.error.reason == "ClientApp raised: boom"
    assert back.metadata == failed.metadata and back.metadata.reply_to_message_id == "m-1"


def test_decoded_record_persists_in_a_context() -> None:
    record = ArrayRecord([np.arange(12, dtype=np.float32).reshape(3, 4)])
    msg = Message(RecordDict({"arrays": record}), dst_node_id=1, message_type="train")
    state = RecordDict({"kept": decode_message(encode_message(msg)).content.array_records["arrays"]})
    ctx = Context(run_id=7, node_id=1, node_config={}, state=state, run_config={})
    assert context_from_proto(context_to_proto(ctx)).state["kept"] == record


def test_tensor_bytes_are_not_copied_by_encode_frames() -> None:
    weights = np.arange(1 << 16, dtype=np.float32)
    record = ArrayRecord([weights])
    frames = encode_frames(Message(RecordDict({"arrays": record}), dst_node_id=1, message_type="train"))
    body = next(f for f in frames if isinstance(f, memoryview) and len(f) == weights.nbytes)
    assert body.obj is record["0"].data


def test_large_config_bytes_travel_beside_the_flower_part() -> None:
    sealed = os.urandom(1 << 20)
    msg = Message(
        RecordDict({"s": ConfigRecord({"a": 1, "sealed": sealed})}), dst_node_id=1, message_type="train"
    )
    frames = encode_frames(msg)
    assert len(frames[0]) < 4096  # the Flower part holds b"" in its place
    back = decode_message(b"".join(frames)).content.config_records["s"]
    assert list(back.items()) == [("a", 1), ("sealed", sealed)]


def test_flower_serde_bytes_are_not_codec_bytes() -> None:
    """A peer still sending Flower's serde is refused clearly (the magic cannot start a protobuf)."""
    msg = Message(RecordDict({"c": ConfigRecord({"x": 1})}), dst_node_id=1, message_type="train")
    with pytest.raises(CodecError, match="bad magic"):
        decode_message(message_to_proto(msg).SerializeToString())
    back = message_from_proto(message_to_proto(decode_message(encode_message(msg))))
    assert back.content.config_records["c"]["x"] == 1


@PROP
@given(_arrays(max_arrays=1).filter(len))
def test_array_from_numpy_is_flowers_array(arrays: list[np.ndarray]) -> None:
    assert array_from_numpy(arrays[0]) == Array(arrays[0])
