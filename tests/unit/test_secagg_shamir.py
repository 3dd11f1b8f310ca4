"""Shamir sharing over GF(2^521 - 1): thresholds, wrong ids, tampering, malformed input."""

from __future__ import annotations

import itertools
import secrets

import pytest

from fedge.security.secagg import SecAggError, shamir_combine, shamir_split
from fedge.security.secagg._shamir import PRIME, SHARE_LEN

IDS = [secrets.randbits(63) | 1 for _ in range(7)]  # node-id-like: large, positive


@pytest.mark.parametrize("t", [1, 2, 3, 5, 7])
def test_any_t_shares_reconstruct(t: int) -> None:
    secret = secrets.token_bytes(32)
    shares = shamir_split(secret, t, IDS)
    assert set(shares) == set(IDS)
    assert all(len(s) == SHARE_LEN for s in shares.values())
    for subset in itertools.combinations(IDS, t):
        assert shamir_combine({i: shares[i] for i in subset}) == secret
    assert shamir_combine(shares) == secret  # more than t shares: the same polynomial


@pytest.mark.parametrize("t", [2, 3, 5])
def test_t_minus_one_shares_do_not(t: int) -> None:
    secret = secrets.token_bytes(32)
    shares = shamir_split(secret, t, IDS)
    for subset in itertools.combinations(IDS, t - 1):
        few = {i: shares[i] for i in subset}
        with pytest.raises(SecAggError, match="do not reconstruct a 32-byte secret"):
            shamir_combine(few)
        # Decoded as a full field element the result exists, and it is not the secret.
        assert shamir_combine(few, length=SHARE_LEN)[-32:] != secret


def test_shares_under_other_ids_do_not_reconstruct() -> None:
    secret = secrets.token_bytes(32)
    shares = shamir_split(secret, 3, IDS)
    a, b, c = IDS[:3]
    with pytest.raises(SecAggError, match="do not reconstruct"):
        shamir_combine({a: shares[b], b: shares[a], c: shares[c]})
    other = shamir_split(secret, 3, IDS)  # fresh random polynomial: shares must not mix across splits
    assert other[a] != shares[a]
    with pytest.raises(SecAggError, match="do not reconstruct"):
        shamir_combine({a: shares[a], b: shares[b], c: other[c]})


def test_tampered_share_is_detected() -> None:
    secret = secrets.token_bytes(32)
    shares = shamir_split(secret, 3, IDS[:4])
    for pos in (0, SHARE_LEN // 2, SHARE_LEN - 1):
        bad = dict(shares)
        raw = bytearray(bad[IDS[1]])
        raw[pos] ^= 0x01
        bad[IDS[1]] = bytes(raw)
        with pytest.raises(SecAggError, match="do not reconstruct|malformed"):
            shamir_combine(bad)


def test_malformed_shares_are_refused() -> None:
    shares = shamir_split(bytes(32), 2, IDS[:2])
    with pytest.raises(SecAggError, match="malformed Shamir share"):
        shamir_combine({IDS[0]: shares[IDS[0]], IDS[1]: shares[IDS[1]][:-1]})
    with pytest.raises(SecAggError, match="malformed Shamir share"):
        shamir_combine({IDS[0]: shares[IDS[0]], IDS[1]: PRIME.to_bytes(SHARE_LEN, "big")})
    with pytest.raises(SecAggError, match="no Shamir shares"):
        shamir_combine({})


def test_bad_ids_and_thresholds_are_refused() -> None:
    with pytest.raises(SecAggError, match="maps to 0"):
        shamir_split(bytes(32), 2, [1, PRIME])
    with pytest.raises(SecAggError, match="duplicate"):
        shamir_split(bytes(32), 2, [5, 5 + PRIME])
    with pytest.raises(SecAggError, match="cannot split a secret 4-of-3"):
        shamir_split(bytes(32), 4, IDS[:3])
    with pytest.raises(SecAggError, match="cannot split a secret 0-of-3"):
        shamir_split(bytes(32), 0, IDS[:3])
    with pytest.raises(SecAggError, match="too long"):
        shamir_split(bytes(SHARE_LEN), 2, IDS[:3])


def test_secret_edge_values_and_lengths() -> None:
    for secret in (bytes(32), b"\xff" * 32, b"\x00" * 31 + b"\x01"):
        assert shamir_combine(shamir_split(secret, 2, IDS[:3])) == secret
    long = secrets.token_bytes(64)
    assert shamir_combine(shamir_split(long, 4, IDS), length=64) == long
