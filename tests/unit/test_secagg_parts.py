"""SecAgg+ building blocks: parameter rules, the masking graph, quantization, the PRG, round tags."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedge.errors import FedgeError
from fedge.security.secagg import (
    SecAggError,
    SecAggParams,
    build_graph,
    dequantize,
    prg,
    quantize,
    round_tag,
)
from fedge.security.secagg import (
    resolve_params as resolve,
)

# -- parameters ------------------------------------------------------------------------------------


def resolve_params(
    num_clients: int, k: int = 0, t: int = 0, clip: float = 8.0, quant_bits: int = 22
) -> SecAggParams:
    """The protocol core takes every parameter; these tests use automatic k, t and these values."""
    return resolve(num_clients, k, t, clip, quant_bits)


@pytest.mark.parametrize(
    ("n", "k", "t"),
    [(3, 2, 2), (4, 3, 2), (5, 4, 3), (7, 6, 4), (10, 8, 5), (16, 8, 5), (17, 10, 6), (100, 14, 8)],
)
def test_automatic_parameters(n: int, k: int, t: int) -> None:
    params = resolve_params(n)
    assert (params.num_clients, params.k, params.t) == (n, k, t)
    assert params.max_dropouts() == k - t
    assert (params.clip, params.quant_bits) == (8.0, 22)


def test_explicit_parameters() -> None:
    assert resolve_params(10, k=4, t=3) == SecAggParams(10, 4, 3, 8.0, 22)
    assert resolve_params(10, k=5).t == 3  # odd k, even n: fine
    assert (resolve_params(15, k=5).k, resolve_params(15, k=5).t) == (6, 4)  # odd k, odd n: k+1
    assert resolve_params(10, k=9, t=9).max_dropouts() == 0
    assert resolve_params(4, quant_bits=30).quant_bits == 30  # 4 * (2^30 - 1) < 2^32


@pytest.mark.parametrize(
    ("kwargs", "message", "hint"),
    [
        (
            dict(num_clients=2),
            "secure aggregation needs at least 3 clients per round, got 2",
            "--min-clients",
        ),
        (dict(num_clients=5, k=5), "k=5 neighbours is impossible with 5 clients (at most 4)", "k <= 4"),
        (dict(num_clients=5, k=1), "k=1 neighbours is too few for secure aggregation", "k >= 2"),
        (
            dict(num_clients=10, k=4, t=5),
            "threshold t=5 exceeds k=4 neighbours: no secret could ever be recovered",
            "between 3 and 4",
        ),
        (
            dict(num_clients=10, k=4, t=2),
            "t=2 is too small for k=4: a server could collect both a client's self-mask and pairwise-mask "
            "shares; need t > k/2",
            "t >= 3",
        ),
        (dict(num_clients=10, k=4, t=-1), "t=-1 is too small for k=4", "t >= 3"),
        (dict(num_clients=15, k=5, t=3), "t=3 is too small for k=6", "k=5 became 6"),
        (dict(num_clients=5, quant_bits=0), "quant-bits=0 must be between 1 and 31", "--quant-bits"),
        (dict(num_clients=5, quant_bits=32), "quant-bits=32 must be between 1 and 31", "--quant-bits"),
        (dict(num_clients=5, clip=0.0), "clip=0.0 must be a positive finite number", "clip=8.0"),
        (dict(num_clients=5, clip=float("nan")), "clip=nan must be a positive finite number", "clip"),
        (dict(num_clients=2000), "quant-bits=22 overflows uint32 with 2000 clients", "--quant-bits to 21"),
        (dict(num_clients=3, quant_bits=31), "quant-bits=31 overflows uint32 with 3 clients", "to 30"),
    ],
)
def test_unsafe_parameters_are_refused(kwargs: dict, message: str, hint: str) -> None:
    with pytest.raises(SecAggError) as info:
        resolve_params(**kwargs)
    assert info.value.message.startswith(message)
    assert hint in info.value.hint
    assert isinstance(info.value, FedgeError) and "\n" not in info.value.message


def test_round_tag() -> None:
    assert round_tag(1, 2) != round_tag(2, 1) != round_tag(1, 3)
    assert round_tag(1, 2) == round_tag(1, 2)
    with pytest.raises(SecAggError, match="invalid run id"):
        round_tag(-1, 2)
    with pytest.raises(SecAggError, match="invalid server round"):
        round_tag(1, 2**64)


# -- graph -----------------------------------------------------------------------------------------


def _ids(n: int, seed: int = 0) -> list[int]:
    return [int(x) for x in np.random.default_rng(seed).choice(2**62, size=n, replace=False) + 2]


@pytest.mark.parametrize(
    ("n", "k", "degree"),
    [
        (3, 2, 2),
        (5, 4, 4),
        (5, 9, 4),
        (10, 4, 4),
        (10, 5, 5),
        (11, 5, 6),
        (20, 6, 6),
        (20, 7, 7),
        (33, 12, 12),
    ],
)
def test_graph_is_regular_symmetric_loop_free(n: int, k: int, degree: int) -> None:
    ids = _ids(n)
    graph = build_graph(ids, k, b"seed")
    assert sorted(graph) == sorted(ids)
    for node, neighbours in graph.items():
        assert len(neighbours) == len(set(neighbours)) == degree
        assert node not in neighbours
        assert all(node in graph[j] for j in neighbours)


def test_graph_is_deterministic_per_seed() -> None:
    ids = _ids(20)
    graph = build_graph(ids, 6, b"seed-1")
    assert build_graph(list(reversed(ids)), 6, b"seed-1") == graph  # input order does not matter
    others = [build_graph(ids, 6, f"seed-{i}".encode()) for i in range(2, 6)]
    assert all(other != graph for other in others)


def test_graph_refusals() -> None:
    with pytest.raises(SecAggError, match="duplicate node ids"):
        build_graph([3, 4, 3], 2, b"s")
    with pytest.raises(SecAggError, match="invalid node id 0"):
        build_graph([0, 4, 5], 2, b"s")
    with pytest.raises(SecAggError, match="k=0 must be at least 1"):
        build_graph([3, 4, 5], 0, b"s")


# -- quantization ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("clip", "bits"), [(8.0, 22), (1.0, 8), (0.5, 31), (3.0, 1)])
def test_quantize_round_trip(clip: float, bits: int) -> None:
    step = clip / (2**bits - 1)
    values = np.random.default_rng(1).uniform(-clip, clip, size=10_000)
    q = quantize(values, clip, bits)
    assert q.dtype == np.uint32 and q.shape == values.shape and int(q.max()) <= 2**bits - 1
    assert np.abs(dequantize(q, 1, clip, bits) - values).max() <= step * (1 + 1e-9)


def test_dequantize_sum() -> None:
    clip, bits, m = 4.0, 20, 50
    vectors = np.random.default_rng(2).uniform(-6, 6, size=(m, 5_000))
    total = np.zeros(5_000, dtype=np.uint32)
    for v in vectors:
        np.add(total, quantize(v, clip, bits), out=total)
    expected = np.clip(vectors, -clip, clip).sum(axis=0)
    assert np.abs(dequantize(total, m, clip, bits) - expected).max() <= m * clip / (2**bits - 1) * (1 + 1e-9)


def test_quantize_clips_and_refuses_non_finite() -> None:
    q = quantize(np.array([-100.0, -8.0, 0.0, 8.0, 1e30, 9.0]), 8.0, 10)
    assert q.tolist() == [0, 0, 512, 1023, 1023, 1023]  # 0.0 -> round(1023 / 2) = 512
    values = np.array([[1.5, -20.0]], dtype=np.float32)
    assert quantize(values, 2.0, 4).tolist() == [[13, 0]]  # round(3.5 / 4 * 15) = 13
    assert values.tolist() == [[1.5, -20.0]]  # the caller's array is not clipped in place
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(SecAggError, match="NaN or infinite"):
            quantize(np.array([0.0, bad]), 8.0, 22)
    with pytest.raises(SecAggError, match="cannot be decoded"):
        dequantize(np.zeros(3, np.uint32), 2000, 8.0, 22)


# -- PRG -------------------------------------------------------------------------------------------


def test_prg_is_the_specified_aes_ctr_keystream() -> None:
    seed, n = b"s" * 32, 70_001  # spans several internal chunks and ends mid-chunk
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"fedge-secagg/v1/prg").derive(seed)
    raw = Cipher(algorithms.AES256(key), modes.CTR(bytes(16))).encryptor().update(bytes(4 * n))
    assert np.array_equal(prg(seed, n), np.frombuffer(raw, dtype=np.uint32))


def test_prg_deterministic_distinct_uniform() -> None:
    a = prg(b"a" * 32, 1_000_000)
    assert a.dtype == np.uint32 and a.shape == (1_000_000,)
    assert np.array_equal(a, prg(b"a" * 32, 1_000_000))
    assert np.array_equal(a[:1000], prg(b"a" * 32, 1000))  # a prefix of the same stream
    assert np.count_nonzero(a == prg(b"b" * 32, 1_000_000)) < 10
    # Mean of 1e6 uniform uint32: std ≈ 2^32 / sqrt(12e6) ≈ 1.24e6, allow ~6.5 sigma.
    assert abs(a.mean(dtype=np.float64) - 2**31) < 8e6
    bits = np.unpackbits(a.view(np.uint8)).reshape(-1, 32).mean(axis=0)
    assert np.all(np.abs(bits - 0.5) < 0.005)


def test_prg_out_buffer_is_reused() -> None:
    out = np.zeros(100, dtype=np.uint32)
    got = prg(b"c" * 32, 64, out=out)
    assert np.shares_memory(got, out) and got.shape == (64,)
    assert np.array_equal(got, prg(b"c" * 32, 64)) and not out[64:].any()
    assert prg(b"c" * 32, 0).shape == (0,)


def test_prg_refusals() -> None:
    with pytest.raises(SecAggError, match="too short"):
        prg(b"short", 4)
    with pytest.raises(SecAggError, match="holds 3 elements, 4 needed"):
        prg(b"c" * 32, 4, out=np.empty(3, np.uint32))
    for bad in (np.empty(8, np.int32), np.empty(16, np.uint32)[::2], np.empty((2, 4), np.uint32)):
        with pytest.raises(SecAggError, match="writable contiguous 1-D uint32"):
            prg(b"c" * 32, 4, out=bad)
