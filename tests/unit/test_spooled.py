"""Messages kept in files between processes (issue 16): decoded and opened straight from the file,
with the same results and the same refusals as from memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedge.chunks import Assembler, FileSpan, split
from fedge.codec import array_view, decode_message, decode_spooled, encode_frames, encode_message
from fedge.security.seal import SealError
from fedge.security.sealed_file import open_sealed_file
from tests.unit.test_seal import _expected, _open, _seal


def _spooled(tmp_path: Path, data: bytes, pad: int = 3) -> FileSpan:
    path = tmp_path / "msg"
    path.write_bytes(b"x" * pad + data)
    return FileSpan(str(path), pad, len(data))


def _open_file(span: FileSpan, **over: Any) -> ArrayRecord:
    return open_sealed_file(span, **_expected(**over))


# Tensors that start and end inside 1 MiB chunks, span chunks, and are empty or 0-d.
ARRAYS = {
    "a": np.arange(300_001, dtype=np.float32),
    "empty": np.zeros((0, 3), np.int64),
    "b": np.linspace(0, 1, 500_000).reshape(1000, 500),
    "scalar": np.array(7, np.int16),
    "big-endian": np.arange(10, dtype=">f4"),
}


def test_a_sealed_payload_opens_from_its_file_exactly_as_from_memory(tmp_path: Path) -> None:
    sealed = _seal(ARRAYS)
    record = _open_file(_spooled(tmp_path, sealed))
    want = _open(sealed)
    assert list(record) == list(want)
    for name, arr in want.items():
        got = array_view(record[name])
        assert got.dtype == arr.dtype and got.shape == arr.shape and got.tobytes() == arr.tobytes()
        assert record[name].data == Array(np.require(arr, requirements="C")).data  # Flower np.save bytes


@pytest.mark.parametrize(
    ("where", "reason"),
    [(lambda n: n // 2, "tampered"), (lambda n: n - 10, "bad-signature"), (lambda n: 1, "malformed")],
)
def test_a_modified_file_is_refused_for_the_same_reason(tmp_path: Path, where: Any, reason: str) -> None:
    sealed = bytearray(_seal(ARRAYS))
    sealed[where(len(sealed))] ^= 0x01
    with pytest.raises(SealError) as info:
        _open_file(_spooled(tmp_path, bytes(sealed)))
    assert info.value.reason == reason
    with pytest.raises(SealError) as again:
        _open(bytes(sealed))
    assert again.value.reason == reason


def test_a_truncated_file_is_malformed(tmp_path: Path) -> None:
    sealed = _seal(ARRAYS)
    with pytest.raises(SealError) as info:
        _open_file(_spooled(tmp_path, sealed[:-100]))
    assert info.value.reason == "malformed"


def test_a_message_spooled_by_the_assembler_decodes_as_from_memory(tmp_path: Path) -> None:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(np.require(v, requirements="C")) for k, v in ARRAYS.items()}),
            "sealed": ConfigRecord({"sealed": b"s" * 3_000_000, "n": 1}),
            "metrics": MetricRecord({"m": 2.5}),
        }
    )
    message = Message(content, dst_node_id=9, message_type="train")
    assembler = Assembler(spool=tmp_path, spool_after=0)
    span = None
    for index, total, piece in split(encode_frames(message), limit=1 << 20):
        span = assembler.add("m", index, total, piece)
    assert isinstance(span, FileSpan) and span.length == len(encode_message(message))
    want = decode_message(encode_message(message))
    got = decode_message(span)
    for key in ("arrays", "sealed", "metrics"):
        assert dict(got.content[key]) == dict(want.content[key]) or key == "arrays"
    for name in ARRAYS:
        assert got.content["arrays"][name].data == want.content["arrays"][name].data
    kept, blobs = decode_spooled(span, keep_blobs=True)
    assert kept.content["sealed"]["sealed"] == b"" and list(blobs) == [("sealed", "sealed")]
    span.discard()
    assert not list(tmp_path.iterdir())


def test_a_corrupted_spooled_message_is_refused_and_a_dropped_one_leaves_no_file(tmp_path: Path) -> None:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    message = Message(
        RecordDict({"sealed": ConfigRecord({"sealed": b"s" * 3_000_000})}),
        dst_node_id=9,
        message_type="train",
    )
    data = bytearray(encode_message(message))
    data[-1000] ^= 1
    with pytest.raises(Exception, match="checksum"):
        decode_spooled(_spooled(tmp_path, bytes(data)), keep_blobs=True)
    assembler = Assembler(spool=tmp_path / "spool", spool_after=0)
    (tmp_path / "spool").mkdir()
    assembler.add("m", 0, 3, b"abc")
    assert len(list((tmp_path / "spool").iterdir())) == 1
    assert assembler.clear() == 3
    assert not list((tmp_path / "spool").iterdir())
