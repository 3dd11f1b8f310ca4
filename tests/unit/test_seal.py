"""Sealed updates: exact round trips, and every way a sealed update must be refused."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from flwr.app import Array, ArrayRecord, ConfigRecord

from fedge.errors import FedgeError
from fedge.protos.v1 import envelope_pb2
from fedge.security import _envelope as env
from fedge.security.seal import (  # to re-sign modified payloads
    ALGORITHM,
    SEALED_KEY,
    AggregatorKey,
    SealError,
    _signed_message,
    _tags,
    new_aggregator_key,
    open_record,
    open_sealed,
    seal,
    seal_record,
    verify_announcement,
)

RUN, ROUND, NODE, STAGE = 7, 3, 42, "train"
SERVER = Ed25519PrivateKey.generate()
DEVICE = Ed25519PrivateKey.generate()
AGG, ANN = new_aggregator_key(RUN, SERVER, ttl=3600)
rng = np.random.default_rng(0)


def _seal(arrays: dict[str, np.ndarray], **over: Any) -> bytes:
    kw: dict[str, Any] = dict(
        announcement=ANN, run_id=RUN, round=ROUND, node_id=NODE, stage=STAGE, device_key=DEVICE
    )
    return seal(arrays, **{**kw, **over})


def _expected(**over: Any) -> dict[str, Any]:
    """What the server expects of a sealed update here (any of it overridden by ``over``)."""
    kw: dict[str, Any] = dict(
        aggregator_key=AGG,
        expected_run_id=RUN,
        expected_round=ROUND,
        expected_node_id=NODE,
        expected_stage=STAGE,
        device_signing_pub=DEVICE.public_key(),
    )
    return {**kw, **over}


def _open(data: bytes, **over: Any) -> dict[str, np.ndarray]:
    return open_sealed(data, **_expected(**over))


def _refused(reason: str, fn: Callable[[], object]) -> SealError:
    with pytest.raises(SealError) as info:
        fn()
    assert info.value.reason == reason, str(info.value)
    assert isinstance(info.value, FedgeError)
    return info.value


def _assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert list(got) == list(want)
    for name, arr in want.items():
        assert got[name].dtype == arr.dtype and got[name].shape == arr.shape, name
        assert got[name].tobytes() == np.ascontiguousarray(arr).tobytes(), name


CASES: dict[str, dict[str, np.ndarray]] = {
    "float32-2d": {"w": rng.standard_normal((31, 17)).astype(np.float32)},
    "all-dtypes": {
        f"t{i}": rng.integers(0, 100, size=(3, 5)).astype(dt)
        for i, dt in enumerate(
            ["?", "i1", "u1", "<i2", "<u2", "<i4", "<u4", "<i8", "<u8", "<f2", "<f4", "<f8"]
        )
    }
    | {"c8": (rng.standard_normal(7) + 1j).astype(np.complex64), "be": np.arange(9, dtype=">f4")},
    "scalar-and-empty": {"s": np.array(3.5), "e": np.zeros((0, 4), np.float32), "b": np.array(True)},
    "no-arrays": {},
    "spanning-chunks": {
        "a": rng.standard_normal(300_001).astype(np.float32),  # 1.2 MB: ends mid-chunk
        "b": rng.integers(0, 255, size=5, dtype=np.uint8),  # forces padding + gather
        "c": rng.standard_normal((512, 1024)).astype(np.float32),  # 2 MiB
    },
    "exact-chunk": {"x": np.ones(env.CHUNK, np.uint8)},
    "fortran-order": {"f": np.asfortranarray(rng.standard_normal((40, 30)))},
}


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip_is_exact(case: str) -> None:
    arrays = CASES[case]
    data = _seal(arrays)
    out = _open(data)
    _assert_same(out, arrays)
    for arr in out.values():
        assert arr.flags.writeable and arr.flags.c_contiguous


def test_round_trip_16mb() -> None:
    big = {"weights": rng.standard_normal(4 << 20).astype(np.float32), "bias": np.arange(10.0)}
    data = _seal(big)
    assert len(data) < big["weights"].nbytes + 64 * 1024
    _assert_same(_open(data), big)


def test_payload_is_a_valid_sealed_payload_proto() -> None:
    data = _seal(CASES["spanning-chunks"])
    msg = envelope_pb2.SealedPayload.FromString(data)
    assert msg.SerializeToString() == data  # our hand framing == protobuf's canonical bytes
    header = envelope_pb2.SealHeader.FromString(msg.header)
    assert (header.run_id, header.round, header.node_id, header.stage) == (RUN, ROUND, NODE, STAGE)
    assert [t.name for t in header.manifest] == ["a", "b", "c"]
    assert all(t.offset % env.ALIGN == 0 for t in header.manifest)


def _ciphertext_offset(data: bytes) -> int:
    _, ct, _ = env.split(memoryview(data))
    return data.index(bytes(ct[:64]))


def test_flipped_ciphertext_byte_is_tampered() -> None:
    data = bytearray(_seal(CASES["spanning-chunks"]))
    at = _ciphertext_offset(bytes(data)) + 1000
    data[at] ^= 0x01
    _refused("tampered", lambda: _open(bytes(data)))


def test_flipped_header_or_signature_byte_is_bad_signature() -> None:
    data = _seal(CASES["float32-2d"])
    msg = envelope_pb2.SealedPayload.FromString(data)
    header = envelope_pb2.SealHeader.FromString(msg.header)
    header.nonce = bytes(b ^ 1 for b in header.nonce)
    forged = envelope_pb2.SealedPayload(
        header=header.SerializeToString(), ciphertext=msg.ciphertext, signature=msg.signature
    )
    _refused("bad-signature", lambda: _open(forged.SerializeToString()))
    sig = bytearray(data)
    sig[-1] ^= 0x80
    _refused("bad-signature", lambda: _open(bytes(sig)))


def test_signed_by_another_device_key_is_bad_signature() -> None:
    other = Ed25519PrivateKey.generate()
    data = _seal(CASES["float32-2d"], device_key=other)
    err = _refused("bad-signature", lambda: _open(data))
    assert str(NODE) in str(err)


def test_replay_of_previous_round_is_refused() -> None:
    last_round = _seal(CASES["float32-2d"], round=ROUND - 1)
    _refused("replay", lambda: _open(last_round))
    _refused("wrong-round", lambda: _open(_seal(CASES["float32-2d"], round=ROUND + 1)))


def test_context_bindings() -> None:
    data = _seal(CASES["float32-2d"], node_id=NODE + 1)
    _refused("wrong-node", lambda: _open(data))
    _refused("wrong-stage", lambda: _open(_seal(CASES["float32-2d"]), expected_stage="evaluate"))
    _refused("wrong-run", lambda: _open(_seal(CASES["float32-2d"]), expected_run_id=RUN + 1))
    other_key, _ = new_aggregator_key(RUN, SERVER, ttl=60)
    _refused("wrong-key", lambda: _open(_seal(CASES["float32-2d"]), aggregator_key=other_key))


def _resign(data: bytes, *, header: bytes | None = None, ciphertext: bytes | None = None) -> bytes:
    """A payload modified and re-signed with the genuine device key: only the AEAD can catch it."""
    msg = envelope_pb2.SealedPayload.FromString(data)
    h = header if header is not None else msg.header
    c = ciphertext if ciphertext is not None else msg.ciphertext
    total = len(c) - env.TAG * -(-len(c) // (env.CHUNK + env.TAG))
    sig = DEVICE.sign(_signed_message(h, _tags(memoryview(c), total)))
    return envelope_pb2.SealedPayload(header=h, ciphertext=c, signature=sig).SerializeToString()


def test_reordered_chunks_fail_even_when_re_signed() -> None:
    data = _seal({"x": rng.standard_normal(3 * env.CHUNK // 8)})  # three full chunks
    ct = envelope_pb2.SealedPayload.FromString(data).ciphertext
    step = env.CHUNK + env.TAG
    swapped = ct[step : 2 * step] + ct[:step] + ct[2 * step :]
    _refused("tampered", lambda: _open(_resign(data, ciphertext=swapped)))


def test_header_is_bound_by_the_aead_even_when_re_signed() -> None:
    data = _seal(CASES["float32-2d"])
    header = envelope_pb2.SealHeader.FromString(envelope_pb2.SealedPayload.FromString(data).header)
    header.manifest[0].name = "renamed"
    _refused("tampered", lambda: _open(_resign(data, header=header.SerializeToString())))


def test_truncated_or_extended_ciphertext_is_malformed() -> None:
    data = _seal(CASES["spanning-chunks"])
    msg = envelope_pb2.SealedPayload.FromString(data)
    short = envelope_pb2.SealedPayload(
        header=msg.header, ciphertext=msg.ciphertext[:-17], signature=msg.signature
    )
    _refused("malformed", lambda: _open(short.SerializeToString()))
    _refused("malformed", lambda: _open(data + b"\x00"))


def test_unsupported_algorithm() -> None:
    data = _seal(CASES["float32-2d"])
    msg = envelope_pb2.SealedPayload.FromString(data)
    header = envelope_pb2.SealHeader.FromString(msg.header)
    header.algorithm = "rot13"
    _refused("unsupported", lambda: _open(_resign(data, header=header.SerializeToString())))


def test_too_many_tensors_is_malformed_before_any_crypto() -> None:
    header = envelope_pb2.SealHeader(
        algorithm=ALGORITHM,
        enc=bytes(80),
        nonce=bytes(12),
        manifest=[envelope_pb2.TensorSpec(name=str(i), dtype="|u1") for i in range(env.MAX_TENSORS + 1)],
    )
    forged = envelope_pb2.SealedPayload(
        header=header.SerializeToString(), ciphertext=bytes(16), signature=bytes(64)
    )
    err = _refused("malformed", lambda: _open(forged.SerializeToString()))
    assert "tensors" in str(err)


def test_seal_refuses_unsealable_input() -> None:
    with pytest.raises(TypeError, match="dtype"):
        _seal({"o": np.array([object()], dtype=object)})
    with pytest.raises(TypeError, match="dtype"):
        _seal({"s": np.array(["a"])})
    _, other_run = new_aggregator_key(RUN + 1, SERVER, ttl=60)
    _refused("wrong-run", lambda: _seal(CASES["float32-2d"], announcement=other_run))


# -- announcements -------------------------------------------------------------------------------


def test_announcement_verifies_and_serializes() -> None:
    pub = verify_announcement(ANN, SERVER.public_key(), RUN)
    assert isinstance(pub, X25519PublicKey)
    assert verify_announcement(ANN.SerializeToString(), SERVER.public_key(), RUN).public_bytes_raw() == (
        pub.public_bytes_raw()
    )


def test_announcement_signed_by_another_key_is_refused() -> None:
    _, rogue = new_aggregator_key(RUN, Ed25519PrivateKey.generate(), ttl=60)
    _refused("bad-signature", lambda: verify_announcement(rogue, SERVER.public_key(), RUN))
    swapped = envelope_pb2.AggregatorAnnouncement()
    swapped.CopyFrom(ANN)
    swapped.not_after += 10_000  # extended by someone without the server key
    _refused("bad-signature", lambda: verify_announcement(swapped, SERVER.public_key(), RUN))


def test_expired_or_foreign_announcement_is_refused() -> None:
    _, ann = new_aggregator_key(RUN, SERVER, ttl=10, now=1000.0)
    assert verify_announcement(ann, SERVER.public_key(), RUN, now=1009.0)
    _refused("expired", lambda: verify_announcement(ann, SERVER.public_key(), RUN, now=1010.5))
    _refused("wrong-run", lambda: verify_announcement(ann, SERVER.public_key(), RUN + 1, now=1000.0))
    _refused("malformed", lambda: verify_announcement(b"\xff\xff", SERVER.public_key(), RUN))
    bad_id = envelope_pb2.AggregatorAnnouncement()
    bad_id.CopyFrom(ann)
    bad_id.key_id = "x25519:0000"
    _refused("malformed", lambda: verify_announcement(bad_id, SERVER.public_key(), RUN, now=1000.0))


def test_aggregator_key_persists_and_hides_its_secret() -> None:
    raw = AGG.private_bytes()
    again = AggregatorKey.from_private_bytes(RUN, raw, AGG.not_after)
    assert again.key_id == AGG.key_id
    _assert_same(_open(_seal(CASES["float32-2d"]), aggregator_key=again), CASES["float32-2d"])
    assert raw.hex() not in repr(AGG) and AGG.key_id in repr(AGG)


# -- Flower records ------------------------------------------------------------------------------


def test_a_record_with_an_array_that_is_not_npy_bytes_is_refused_as_a_fedge_error() -> None:
    """The device turns a FedgeError from sealing into an error reply instead of losing the task."""
    record = ArrayRecord({"w": Array(dtype="float32", shape=(2,), stype="torch.raw", data=bytes(8))})
    with pytest.raises(FedgeError, match="not plain np.save bytes"):
        seal_record(
            record, announcement=ANN, run_id=RUN, round=ROUND, node_id=NODE, stage=STAGE, device_key=DEVICE
        )


def test_record_round_trip_preserves_arrays_exactly() -> None:
    arrays = CASES["all-dtypes"] | CASES["scalar-and-empty"]
    record = ArrayRecord({name: Array(arr) for name, arr in arrays.items()})
    sent = dict(record.items())
    sealed = seal_record(
        record, announcement=ANN, run_id=RUN, round=ROUND, node_id=NODE, stage=STAGE, device_key=DEVICE
    )
    assert isinstance(sealed, ConfigRecord) and isinstance(sealed[SEALED_KEY], bytes)
    assert not record  # emptied as it was sealed: the plaintext is not kept beside the sealed copy
    record = ArrayRecord(sent)
    opened = open_record(
        sealed,
        aggregator_key=AGG,
        expected_run_id=RUN,
        expected_round=ROUND,
        expected_node_id=NODE,
        expected_stage=STAGE,
        device_signing_pub=DEVICE.public_key(),
    )
    assert list(opened) == list(record)
    for name, array in record.items():
        got = opened[name]
        assert (got.dtype, got.shape, got.stype, got.data) == (
            array.dtype,
            array.shape,
            array.stype,
            array.data,
        )


def test_open_record_without_sealed_bytes_is_malformed() -> None:
    kw: dict[str, Any] = dict(
        aggregator_key=AGG,
        expected_run_id=RUN,
        expected_round=ROUND,
        expected_node_id=NODE,
        expected_stage=STAGE,
        device_signing_pub=DEVICE.public_key(),
    )
    _refused("malformed", lambda: open_record(ConfigRecord({"other": 1}), **kw))
