"""open_sealed on hostile bytes: only SealError, and memory bounded by what was actually received.

The bound (peak traced allocation <= 4x input + 1 MiB) holds because every size the header declares
is checked against the received ciphertext length before the plaintext buffer is allocated.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedge.protos.v1 import envelope_pb2
from fedge.security import _envelope as env
from fedge.security.seal import (
    ALGORITHM,
    SealError,
    new_aggregator_key,
    open_sealed,
    seal,
    verify_announcement,
)

SERVER = Ed25519PrivateKey.generate()
DEVICE = Ed25519PrivateKey.generate()
AGG, ANN = new_aggregator_key(1, SERVER, ttl=3600)
rng = np.random.default_rng(1)
ARRAYS = {
    "w": rng.standard_normal((300, 700)).astype(np.float32),  # 840 KB
    "b": rng.standard_normal(300).astype(np.float64),
    "i": np.arange(5, dtype=np.int8),
}
VALID = seal(ARRAYS, announcement=ANN, run_id=1, round=2, node_id=3, stage="train", device_key=DEVICE)
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _open(data: bytes) -> dict[str, np.ndarray]:
    return open_sealed(
        data,
        aggregator_key=AGG,
        expected_run_id=1,
        expected_round=2,
        expected_node_id=3,
        expected_stage="train",
        device_signing_pub=DEVICE.public_key(),
    )


@pytest.fixture(scope="module", autouse=True)
def _traced() -> Iterator[None]:
    tracemalloc.start()
    yield
    tracemalloc.stop()


def _peak_while(fn: Callable[[], object]) -> tuple[int, BaseException | None]:
    """Peak traced bytes allocated during ``fn`` (above what was live before), and its exception."""
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    try:
        fn()
        error = None
    except BaseException as exc:  # noqa: BLE001 - the test inspects it
        error = exc
    return tracemalloc.get_traced_memory()[1] - before, error


def _refused_within_bound(data: bytes) -> SealError:
    peak, error = _peak_while(lambda: _open(data))
    assert isinstance(error, SealError), f"expected SealError, got {error!r}"
    assert peak <= 4 * len(data) + (1 << 20), f"peak {peak} B for {len(data)} B of input"
    return error


def test_valid_payload_opens_within_the_bound() -> None:
    peak, error = _peak_while(lambda: _open(VALID))
    assert error is None
    assert peak <= 4 * len(VALID) + (1 << 20)


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes(data: bytes) -> None:
    _refused_within_bound(data)


@FUZZ
@given(st.integers(min_value=0, max_value=len(VALID) - 1))
def test_truncations(length: int) -> None:
    _refused_within_bound(VALID[:length])


@FUZZ
@given(st.integers(min_value=0, max_value=len(VALID) - 1), st.integers(min_value=1, max_value=255))
def test_any_single_byte_change_is_refused(position: int, xor: int) -> None:
    mutated = bytearray(VALID)
    mutated[position] ^= xor
    _refused_within_bound(bytes(mutated))


@FUZZ
@given(st.binary(min_size=1, max_size=64), st.integers(min_value=0, max_value=len(VALID)))
def test_insertions(junk: bytes, position: int) -> None:
    _refused_within_bound(VALID[:position] + junk + VALID[position:])


_dims = st.lists(st.integers(min_value=0, max_value=2**64 - 1), max_size=6)


@FUZZ
@given(
    st.lists(st.tuples(st.sampled_from(["<f4", "|u1", "<c16", "O", "<U8"]), _dims), min_size=1, max_size=8),
    st.integers(min_value=16, max_value=4096),
)
def test_declared_sizes_are_checked_before_allocation(
    specs: list[tuple[str, list[int]]], ct_len: int
) -> None:
    """Headers declaring huge or inconsistent tensors over a small ciphertext allocate nothing big."""
    manifest, offset = [], 0
    for i, (dtype, shape) in enumerate(specs):
        nbytes = int(np.prod(shape, dtype=object)) * 4 if shape else 4
        manifest.append(
            envelope_pb2.TensorSpec(
                name=f"t{i}", dtype=dtype, shape=shape, offset=offset, nbytes=nbytes % 2**64
            )
        )
        offset = env.aligned(offset + nbytes) % 2**64
    header = envelope_pb2.SealHeader(
        run_id=1, round=2, node_id=3, stage="train", key_id=AGG.key_id, enc=bytes(80), nonce=bytes(12)
    )
    header.algorithm = ALGORITHM
    header.manifest.extend(manifest)
    payload = envelope_pb2.SealedPayload(
        header=header.SerializeToString(), ciphertext=bytes(ct_len), signature=bytes(64)
    ).SerializeToString()
    error = _refused_within_bound(payload)
    assert error.reason in {"malformed", "bad-signature"}


def test_huge_declared_tensor_is_refused_as_malformed() -> None:
    header = envelope_pb2.SealHeader(algorithm=ALGORITHM, enc=bytes(80), nonce=bytes(12))
    header.manifest.add(name="w", dtype="<f8", shape=[1 << 37], offset=0, nbytes=1 << 40)
    payload = envelope_pb2.SealedPayload(
        header=header.SerializeToString(), ciphertext=bytes(32), signature=bytes(64)
    ).SerializeToString()
    assert _refused_within_bound(payload).reason == "malformed"


@FUZZ
@given(st.binary(max_size=512))
def test_announcement_random_bytes(data: bytes) -> None:
    with pytest.raises(SealError):
        verify_announcement(data, SERVER.public_key(), 1)
