"""Deferred replies (issue 16): a sealed update read from its spool file tensor by tensor, screened in
one pass and folded in a second, with the results and refusals of the whole-record path."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedge.chunks import FileSpan
from fedge.codec import as_views
from fedge.security.seal import SealError
from fedge.security.sealed_file import SealedFile, verify_sealed_file
from fedge.security.validate import StreamValidator, ValidationError, validate_reply
from fedge.server.deferred import DeferredArrays, materialized
from fedge.server.screening import REJECTED, ReplyScreen
from fedge.strategies.streaming import WeightedSum
from tests.unit.test_seal import NODE, RUN, _expected, _open, _seal
from tests.unit.test_spooled import ARRAYS, _spooled


def _verify(span: FileSpan, **over: Any) -> SealedFile:
    return verify_sealed_file(span, **_expected(**over))


def _sealed_file(tmp_path: Path, arrays: dict[str, np.ndarray], flip: int | None = None) -> SealedFile:
    """``arrays`` sealed into a spool file of their own (``flip``: one bit changed at that offset)."""
    sealed = bytearray(_seal(arrays))
    if flip is not None:
        sealed[flip] ^= 0x01
    return _verify(_spooled(Path(tempfile.mkdtemp(dir=tmp_path)), bytes(sealed)))


def test_tensor_by_tensor_reads_give_the_opened_arrays_on_every_pass(tmp_path: Path) -> None:
    source = _sealed_file(tmp_path, ARRAYS)
    want = _open(_seal(ARRAYS))
    assert source.layout == {n: (a.dtype, a.shape) for n, a in want.items()}
    for _ in range(2):  # the screen's pass, then the fold's
        got = list(source.arrays())
        assert [n for n, _ in got] == list(want)
        for name, arr in got:
            assert arr.dtype == want[name].dtype and arr.shape == want[name].shape
            assert arr.tobytes() == want[name].tobytes()
    record = source.record()
    assert all(record[n].data == Array(np.require(a, requirements="C")).data for n, a in want.items())
    source.close()


def test_a_later_chunk_that_fails_authentication_stops_the_pass(tmp_path: Path) -> None:
    arrays = {"a": np.arange(600_000, dtype=np.float32), "b": np.ones(600_000, np.float32)}
    n = len(_seal(arrays))
    source = _sealed_file(tmp_path, arrays, flip=n * 3 // 4)  # inside the last tensor's chunks
    passed = []
    with pytest.raises(SealError) as info:
        for name, _ in source.arrays():
            passed.append(name)
    assert info.value.reason == "tampered" and passed == ["a"]  # "b" never comes out


def test_a_bad_signature_is_refused_before_any_decryption(tmp_path: Path) -> None:
    n = len(_seal(ARRAYS))
    with pytest.raises(SealError) as info:
        _sealed_file(tmp_path, ARRAYS, flip=n - 10)
    assert info.value.reason == "bad-signature"


REFERENCE = {"w": np.zeros((300, 1000), np.float32), "b": np.zeros(7, np.float64), "n": np.zeros(1, np.int64)}


@pytest.mark.parametrize(
    ("reply", "options", "reason"),
    [
        ({**REFERENCE, "w": np.full((300, 1000), 0.01, np.float32)}, {"max_norm": 100.0}, None),
        ({**REFERENCE, "w": np.full((300, 1000), 1.0, np.float32)}, {"max_norm": 100.0}, "norm"),
        ({**REFERENCE, "b": np.array([0, 0, np.nan, 0, 0, 0, 0])}, {}, "non-finite"),
        ({**REFERENCE, "w": np.zeros((1000, 300), np.float32)}, {}, "shape"),
        ({**REFERENCE, "b": np.zeros(7, np.float32)}, {}, "dtype"),
        ({**REFERENCE, "b": np.zeros(7, np.float32)}, {"mirror": False}, None),
        ({"w": REFERENCE["w"], "n": REFERENCE["n"]}, {}, "names"),
    ],
)
def test_the_streamed_screen_refuses_what_the_whole_record_screen_refuses(
    reply: dict[str, np.ndarray], options: dict[str, Any], reason: str | None
) -> None:
    reference = ArrayRecord({k: Array(v) for k, v in REFERENCE.items()})

    def streamed() -> None:
        validator = StreamValidator({n: (a.dtype, a.shape) for n, a in reply.items()}, reference, **options)
        for name, arr in reply.items():
            validator.feed(name, arr)
        validator.finish()

    for check in (streamed, lambda: validate_reply(reply, reference, **options)):
        if reason is None:
            check()
        else:
            with pytest.raises(ValidationError) as info:
                check()
            assert info.value.reason == reason


def test_a_fold_tensor_by_tensor_equals_the_fold_of_whole_records(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    updates = [
        {"a": rng.normal(size=(500, 700)).astype(np.float32), "c": rng.normal(size=9)} for _ in range(3)
    ]
    whole, pieces = WeightedSum(), WeightedSum()
    for i, update in enumerate(updates):
        whole.add(update, i + 1.5)
        source = _sealed_file(tmp_path, update)
        pieces.add_arrays(source.layout, source.arrays(), i + 1.5)
        source.close()
    got, want = as_views(pieces.result()), as_views(whole.result())
    assert all(np.array_equal(got[n], want[n]) for n in want)


def test_an_update_that_fails_part_way_leaves_an_accumulator_that_refuses_use() -> None:
    total = WeightedSum()
    total.add({"a": np.ones(3, np.float32), "b": np.ones(2, np.float32)}, 1.0)
    layout = {"a": (np.dtype(np.float32), (3,)), "b": (np.dtype(np.float32), (2,))}

    def failing() -> Any:
        yield "a", np.ones(3, np.float32)
        raise SealError("tampered", "chunk 2")

    with pytest.raises(SealError):
        total.add_arrays(layout, failing(), 1.0)
    with pytest.raises(RuntimeError, match="part-way"):
        total.result()
    with pytest.raises(RuntimeError):
        total.add({"a": np.ones(3, np.float32), "b": np.ones(2, np.float32)}, 1.0)
    short = WeightedSum()
    with pytest.raises(RuntimeError, match="without arrays"):
        short.add_arrays(layout, iter([("a", np.ones(3, np.float32))]), 1.0)


def _deferred_reply(
    tmp_path: Path, arrays: dict[str, np.ndarray], flip: int | None = None
) -> tuple[Message, Message]:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, RUN, 0
    instruction = Message(
        RecordDict({"arrays": ArrayRecord({k: Array(np.zeros_like(v)) for k, v in arrays.items()})}),
        dst_node_id=NODE,
        message_type="train",
    )
    instruction.metadata.__dict__["_message_id"] = "i1"
    reply = Message(
        RecordDict({"arrays": DeferredArrays(_sealed_file(tmp_path, arrays, flip))}), reply_to=instruction
    )
    return instruction, reply


def test_the_screen_reads_a_deferred_reply_through_and_refuses_a_bad_chunk_with_nothing_to_compare(
    tmp_path: Path,
) -> None:
    arrays = {"a": np.arange(600_000, dtype=np.float32), "b": np.ones(600_000, np.float32)}
    audit: list[tuple[str, dict[str, Any]]] = []
    screen = ReplyScreen(RUN, lambda event, **f: audit.append((event, f)), max_norm=None)
    instruction, reply = _deferred_reply(tmp_path, arrays)
    assert screen.check(reply, instruction, None) is reply
    instruction, reply = _deferred_reply(tmp_path, arrays, flip=len(_seal(arrays)) * 3 // 4)
    refused = screen.check(reply, instruction, None)  # no reference: the pass still authenticates
    assert refused.has_error() and refused.error.code == REJECTED and "tampered" in refused.error.reason
    assert audit[-1][0] == "update-rejected" and audit[-1][1]["reason"] == "tampered"


def test_a_deferred_reply_above_the_norm_bound_is_refused_and_one_handed_on_is_made_whole(
    tmp_path: Path,
) -> None:
    arrays = {"a": np.full(600_000, 0.5, np.float32)}
    screen = ReplyScreen(RUN, lambda *a, **k: None, max_norm=1.0)
    instruction, reply = _deferred_reply(tmp_path, arrays)
    refused = screen.check(reply, instruction, instruction.content.array_records["arrays"])
    assert refused.has_error() and "norm" in str(refused.error.reason)
    _, reply = _deferred_reply(tmp_path, arrays)
    whole = materialized(reply).content["arrays"]
    assert type(whole) is ArrayRecord and np.array_equal(as_views(whole)["a"], arrays["a"])
