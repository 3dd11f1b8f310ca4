"""SecAgg+ end to end in process: exact sums under dropouts at every stage, refusals, server view."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pytest

from fedge.security.secagg import (
    ClientSession,
    SecAggError,
    SecAggParams,
    ServerSession,
    dequantize,
    quantize,
    round_tag,
)
from fedge.security.secagg import (
    resolve_params as resolve,
)

TAG = round_tag(7, 3)
STAGES = ("silent", "advertise", "share", "masked", "unmask")


def resolve_params(
    num_clients: int, k: int = 0, t: int = 0, clip: float = 8.0, quant_bits: int = 22
) -> SecAggParams:
    """The protocol core takes every parameter; these tests use automatic k, t and these values."""
    return resolve(num_clients, k, t, clip, quant_bits)


@dataclass
class Drops:
    """Nodes that drop: never advertise; after advertise; after share-keys; while masking; at unmask."""

    by_stage: dict[str, set[int]] = field(default_factory=dict)

    def __getitem__(self, stage: str) -> set[int]:
        return self.by_stage.get(stage, set())

    def upto(self, stage: str) -> set[int]:
        return set().union(*(self[s] for s in STAGES[: STAGES.index(stage) + 1]))


@dataclass
class Round:
    params: SecAggParams
    server: ServerSession
    clients: dict[int, ClientSession]
    quantized: dict[int, np.ndarray]
    vectors: dict[int, np.ndarray]


def _arrays(obj: object, seen: set[int] | None = None) -> Iterator[np.ndarray]:
    """Every ndarray reachable from ``obj`` through attributes and containers."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        yield obj
    elif isinstance(obj, dict):
        for value in (*obj.keys(), *obj.values()):
            yield from _arrays(value, seen)
    elif isinstance(obj, list | tuple | set | frozenset):
        for value in obj:
            yield from _arrays(value, seen)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        yield from _arrays(vars(obj), seen)


def node_ids(n: int, seed: int) -> list[int]:
    """Large random node ids, as fedge's server assigns them."""
    return sorted(int(i) for i in np.random.default_rng(seed).choice(2**62, size=n, replace=False) + 2)


def run_round(
    n: int,
    drops: Drops,
    *,
    k: int = 0,
    t: int = 0,
    d: int = 10_000,
    seed: int = 0,
    after_masked: Callable[[Round], None] | None = None,
) -> tuple[Round, np.ndarray, list[int]]:
    """Drive one round like the Flower glue would, with the given dropouts; returns finish()."""
    rng = np.random.default_rng(seed + 10_000)
    params = resolve_params(n, k=k, t=t)
    ids = node_ids(n, seed)
    server = ServerSession(params, ids, TAG, rng.bytes(16))
    clients = {i: ClientSession(i, params, TAG) for i in ids}
    vectors = {i: rng.normal(scale=3.0, size=d) for i in ids}  # some values beyond clip=8
    quantized = {i: quantize(vectors[i], params.clip, params.quant_bits) for i in ids}
    rnd = Round(params, server, clients, quantized, vectors)
    for i in ids:
        if i not in drops["silent"]:
            server.receive_keys(i, *clients[i].advertise())
    u1 = [i for i in ids if i not in drops["silent"]]
    replies = {i: clients[i].share_keys(server.keys_for(i)) for i in u1 if i not in drops["advertise"]}
    for i, cts in replies.items():
        server.receive_shares(i, cts)
    for i in replies:
        if i in drops["share"]:
            continue
        masked = clients[i].masked_input(vectors[i], server.shares_for(i))
        if i not in drops["masked"]:
            server.receive_masked(i, masked)
            if after_masked is not None:
                after_masked(rnd)
    survivors, dropped = server.unmask_request()
    for i in survivors:
        if i not in drops["unmask"]:
            server.receive_unmask(i, clients[i].unmask(survivors, dropped))
    total, finished = server.finish()
    return rnd, total, finished


def _random_drops(ids: list[int], budget: int, rng: np.random.Generator) -> Drops:
    count = budget if rng.random() < 0.6 else int(rng.integers(0, budget + 1))
    chosen = rng.choice(len(ids), size=count, replace=False)
    drops = Drops()
    for pos in chosen:
        drops.by_stage.setdefault(str(rng.choice(STAGES)), set()).add(ids[pos])
    return drops


def _expected(rnd: Round, survivors: list[int]) -> np.ndarray:
    total = np.zeros_like(next(iter(rnd.quantized.values())))
    for i in survivors:
        np.add(total, rnd.quantized[i], out=total)
    return total


CONFIGS = [(5, 0, 0), (10, 0, 0), (16, 0, 0), (10, 5, 0), (10, 9, 6), (15, 5, 0), (16, 6, 4)]


@pytest.mark.parametrize(("n", "k", "t"), CONFIGS)
@pytest.mark.parametrize("seed", range(6))
def test_exact_sum_with_dropouts_at_every_stage(n: int, k: int, t: int, seed: int) -> None:
    rng = np.random.default_rng(1000 * seed + n)
    params = resolve_params(n, k=k, t=t)
    ids = node_ids(n, seed)
    drops = _random_drops(ids, params.max_dropouts(), rng)
    rnd, total, survivors = run_round(n, drops, k=k, t=t, seed=seed)
    assert survivors == sorted(set(ids) - drops.upto("masked"))
    assert total.dtype == np.uint32 and np.array_equal(total, _expected(rnd, survivors))
    m, clip, bits = len(survivors), params.clip, params.quant_bits
    floats = sum(np.clip(rnd.vectors[i], -clip, clip) for i in survivors)
    assert np.abs(dequantize(total, m, clip, bits) - floats).max() <= m * clip / (2**bits - 1) * (1 + 1e-9)


def test_every_stage_at_the_limit() -> None:
    """n=12, k=11, t=6 tolerates 5 dropouts: one node drops at each of the five stages."""
    params = resolve_params(12, k=11, t=6)
    ids = node_ids(12, 5)
    drops = Drops({s: {ids[pos]} for pos, s in enumerate(STAGES)})
    assert sum(len(drops[s]) for s in STAGES) == params.max_dropouts()
    rnd, total, survivors = run_round(12, drops, k=11, t=6, seed=5)
    assert survivors == sorted(set(ids) - set(ids[:4]))
    assert np.array_equal(total, _expected(rnd, survivors))


def test_server_never_holds_an_individual_vector() -> None:
    checks = []

    def inspect(rnd: Round) -> None:
        held = list(_arrays(rnd.server))
        assert held, "the running sum must be reachable"
        for q in rnd.quantized.values():
            assert not any(a.shape == q.shape and np.array_equal(a, q) for a in held)
        if len(rnd.server.survivors) == 1:
            (first,) = rnd.server.survivors
            (total,) = [a for a in held if a.shape == rnd.quantized[first].shape]
            assert np.count_nonzero(total == rnd.quantized[first]) < 10  # masked, not q_1
        checks.append(len(rnd.server.survivors))

    run_round(10, Drops({"masked": set()}), after_masked=inspect)
    assert checks == list(range(1, 11))


def test_too_many_dropouts_name_the_node() -> None:
    ids = node_ids(5, 0)
    # n=5, k=4, t=3 tolerates one dropout; two after share-keys leave each survivor 2 shares of b.
    with pytest.raises(SecAggError) as info:
        run_round(5, Drops({"share": set(ids[:2])}), seed=0)
    assert info.value.message == (
        f"secagg: cannot reconstruct the self-mask seed of surviving node {ids[2]}: 2 shares, need t=3"
    )
    with pytest.raises(SecAggError) as info:
        run_round(5, Drops({"share": {ids[0]}, "unmask": {ids[1], ids[2]}}), seed=0)
    assert info.value.message.startswith(
        f"secagg: cannot reconstruct the mask key of dropped node {ids[0]}: 2 shares, need t=3"
    )
    with pytest.raises(SecAggError, match="only 2 clients sent masked input, need t=3"):
        run_round(5, Drops({"masked": set(ids[:3])}), seed=0)
    with pytest.raises(SecAggError, match="got 2 neighbours, needs t=3 to k=4"):
        run_round(5, Drops({"silent": set(ids[:2])}), seed=0)
    with pytest.raises(SecAggError, match="received shares from 2 neighbours, needs t=3"):
        run_round(5, Drops({"advertise": set(ids[:2])}), seed=0)


# -- refusals --------------------------------------------------------------------------------------


def _setup(n: int = 5) -> tuple[SecAggParams, ServerSession, dict[int, ClientSession], dict[int, dict]]:
    params = resolve_params(n)
    ids = list(range(11, 11 + n))
    server = ServerSession(params, ids, TAG, b"g" * 16)
    clients = {i: ClientSession(i, params, TAG) for i in ids}
    for i in ids:
        server.receive_keys(i, *clients[i].advertise())
    for i in ids:
        server.receive_shares(i, clients[i].share_keys(server.keys_for(i)))
    return params, server, clients, {i: server.shares_for(i) for i in ids}


def test_client_refuses_inconsistent_unmask_requests() -> None:
    _, _, clients, shares = _setup()
    for i, c in clients.items():
        c.masked_input(np.zeros(10), shares[i])
    with pytest.raises(SecAggError, match="node 12 is listed as both survivor and dropped"):
        clients[11].unmask([11, 12, 13, 14], [12, 15])
    with pytest.raises(SecAggError, match="listed as dropped"):
        clients[12].unmask([11, 13, 14], [12, 15])
    with pytest.raises(SecAggError, match="2 survivors, needs t=3"):
        clients[13].unmask([13, 14], [11, 12, 15])
    answer = clients[14].unmask([11, 12, 13, 14], [15])
    assert set(answer) == {11, 12, 13, 15}
    with pytest.raises(SecAggError, match="'unmasked' requested in stage 'unmasked'"):
        clients[14].unmask([11, 12, 13, 14, 15], [])  # a second request could collect the other half


def test_client_refuses_bad_ciphertexts() -> None:
    params, _, clients, shares = _setup()
    bad = dict(shares[11])
    flipped = bytearray(bad[12])
    flipped[-1] ^= 1
    bad[12] = bytes(flipped)
    with pytest.raises(SecAggError, match="from node 12 failed authentication"):
        clients[11].masked_input(np.zeros(10), bad)
    swapped = dict(shares[13])
    swapped[12], swapped[14] = shares[13][14], shares[13][12]  # src in the AD must match
    with pytest.raises(SecAggError, match="failed authentication"):
        clients[13].masked_input(np.zeros(10), swapped)
    reflected = {**shares[12], 14: shares[14][12]}  # 12's own ciphertext for 14, sent back as 14's
    with pytest.raises(SecAggError, match="from node 14 failed authentication"):
        clients[12].masked_input(np.zeros(10), reflected)
    with pytest.raises(SecAggError, match="received shares from 2 neighbours, needs t=3"):
        clients[15].masked_input(np.zeros(10), dict(list(shares[15].items())[:2]))
    with pytest.raises(SecAggError, match="'masked' requested in stage 'masked'"):
        clients[15].masked_input(np.zeros(10), shares[15])  # one attempt only, even after a refusal
    fresh = ClientSession(16, params, TAG)
    with pytest.raises(SecAggError, match="'shared' requested in stage 'new'"):
        fresh.share_keys({})


def test_shares_from_another_round_are_refused() -> None:
    params = resolve_params(3)
    a, b, c = (ClientSession(i, params, TAG) for i in (1, 2, 3))
    a_next = ClientSession(1, params, round_tag(7, 4))
    keys = {1: a.advertise(), 2: b.advertise(), 3: c.advertise()}
    a_next.advertise()
    a_next._c_sk, a_next._s_sk = a._c_sk, a._s_sk  # same keys, next round: only the tag differs
    a_next.share_keys({2: keys[2], 3: keys[3]})
    from_b = b.share_keys({1: keys[1], 3: keys[3]})
    from_c = c.share_keys({1: keys[1], 2: keys[2]})
    with pytest.raises(SecAggError, match="failed authentication"):
        a_next.masked_input(np.zeros(4), {2: from_b[1], 3: from_c[1]})


def test_client_refuses_bad_neighbour_sets() -> None:
    params = resolve_params(5)
    c = ClientSession(11, params, TAG)
    c.advertise()
    key = ClientSession(12, params, TAG).advertise()
    with pytest.raises(SecAggError, match="offered its own keys"):
        c.share_keys({11: key, 12: key, 13: key})
    c = ClientSession(11, params, TAG)
    c.advertise()
    with pytest.raises(SecAggError, match="got 5 neighbours, needs t=3 to k=4"):
        c.share_keys({j: key for j in range(12, 17)})
    for bad in ((bytes(32), key[1]), (b"short", key[1])):
        c = ClientSession(11, params, TAG)
        c.advertise()
        with pytest.raises(SecAggError, match="node 13"):
            c.share_keys({12: key, 13: bad, 14: key})
    with pytest.raises(SecAggError, match="invalid node id 0"):
        ClientSession(0, params, TAG)


def test_server_enforces_stage_order_and_membership() -> None:
    params, server, clients, shares = _setup(7)  # k=6, t=4: tolerates two dropouts
    extra = ClientSession(16, params, TAG)
    with pytest.raises(SecAggError, match="keys from node 11 arrived after the advertise stage closed"):
        server.receive_keys(11, *extra.advertise())
    for i in (11, 12, 13, 16, 17):
        server.receive_masked(i, clients[i].masked_input(np.ones(10), shares[i]))
    with pytest.raises(SecAggError, match="node 11 sent masked input twice"):
        server.receive_masked(11, np.zeros(10, np.uint32))
    with pytest.raises(SecAggError, match="has 9 elements, expected 10"):
        server.receive_masked(14, np.zeros(9, np.uint32))
    with pytest.raises(SecAggError, match="not 1-D uint32"):
        server.receive_masked(14, np.zeros(10, np.float64))
    with pytest.raises(SecAggError, match="node 99 is not in U2"):
        server.receive_masked(99, np.zeros(10, np.uint32))
    assert server.unmask_request() == ([11, 12, 13, 16, 17], [14, 15])
    with pytest.raises(SecAggError, match="masked input from node 14 arrived after the masked-input stage"):
        server.receive_masked(14, clients[14].masked_input(np.ones(10), shares[14]))
    with pytest.raises(SecAggError, match="node 14 is not in U3"):
        server.receive_unmask(14, {})
    for i in (11, 12, 13, 16, 17):
        server.receive_unmask(i, clients[i].unmask([11, 12, 13, 16, 17], [14, 15]))
    with pytest.raises(SecAggError, match="node 11 answered the unmask request twice"):
        server.receive_unmask(11, {})
    total, survivors = server.finish()
    assert survivors == [11, 12, 13, 16, 17]
    assert np.array_equal(total, 5 * quantize(np.ones(10), params.clip, params.quant_bits))
    with pytest.raises(SecAggError, match="finish arrived after the unmask stage closed"):
        server.finish()


def test_server_refusals_at_setup_and_finish() -> None:
    with pytest.raises(SecAggError, match="resolved for 5 clients, 4 sampled"):
        ServerSession(resolve_params(5), [1, 2, 3, 4], TAG, b"g")
    server = ServerSession(resolve_params(3), [1, 2, 3], TAG, b"g")
    with pytest.raises(SecAggError, match="no masked input arrived"):
        server.finish()
    _, server, clients, shares = _setup()
    for i in clients:
        server.receive_masked(i, clients[i].masked_input(np.ones(10), shares[i]))
    survivors, dropped = server.unmask_request()
    answers = {i: clients[i].unmask(survivors, dropped) for i in survivors}
    tampered = dict(answers[11])
    tampered[12] = bytes(66)
    server.receive_unmask(11, tampered)
    for i in (12, 13, 14, 15):
        server.receive_unmask(i, answers[i])
    with pytest.raises(SecAggError, match="do not reconstruct"):
        server.finish()


def test_asymmetric_share_delivery_stays_exact() -> None:
    """A node that omits a neighbour's shares is masked with by nobody for that pair: still exact."""
    params = resolve_params(10)
    ids = list(range(21, 31))
    server = ServerSession(params, ids, TAG, b"h" * 16)
    clients = {i: ClientSession(i, params, TAG) for i in ids}
    for i in ids:
        server.receive_keys(i, *clients[i].advertise())
    for i in ids:
        cts = clients[i].share_keys(server.keys_for(i))
        if i == 21:
            del cts[min(cts)]
        server.receive_shares(i, cts)
    q, vecs = {}, {i: np.full(100, float(i % 5)) for i in ids}
    for i in ids:
        forwarded = server.shares_for(i)
        assert all(i in server.shares_for(j) for j in forwarded)
        if i != 22:  # 22 drops: its mask pairs must be removed from the others
            server.receive_masked(i, clients[i].masked_input(vecs[i], forwarded))
            q[i] = quantize(vecs[i], params.clip, params.quant_bits)
    survivors, dropped = server.unmask_request()
    for i in survivors:
        server.receive_unmask(i, clients[i].unmask(survivors, dropped))
    total, _ = server.finish()
    assert np.array_equal(total, np.sum(list(q.values()), axis=0, dtype=np.uint32))


def test_server_refuses_malformed_relay_material() -> None:
    params = resolve_params(3)
    server = ServerSession(params, [1, 2, 3], TAG, b"g")
    clients = {i: ClientSession(i, params, TAG) for i in (1, 2, 3)}
    keys = {i: c.advertise() for i, c in clients.items()}
    with pytest.raises(SecAggError, match="node 1 advertised a malformed X25519 key"):
        server.receive_keys(1, b"x" * 31, keys[1][1])
    with pytest.raises(SecAggError, match="node 9 is not in this round's sample"):
        server.receive_keys(9, *keys[1])
    for i in (1, 2, 3):
        server.receive_keys(i, *keys[i])
    with pytest.raises(SecAggError, match="node 1 advertised keys twice"):
        server.receive_keys(1, *keys[1])
    cts = {i: clients[i].share_keys(server.keys_for(i)) for i in (1, 2, 3)}
    with pytest.raises(SecAggError, match="node 1 sent a malformed share ciphertext"):
        server.receive_shares(1, {2: cts[1][2] + b"x", 3: cts[1][3]})
    server.receive_shares(1, {**cts[1], 99: b"ignored: not a neighbour"})
    with pytest.raises(SecAggError, match="node 1 sent shares twice"):
        server.receive_shares(1, cts[1])
    for i in (2, 3):
        server.receive_shares(i, cts[i])
    for i in (1, 2, 3):
        server.receive_masked(i, clients[i].masked_input(np.ones(5), server.shares_for(i)))
    server.unmask_request()
    answers = {i: clients[i].unmask([1, 2, 3], []) for i in (1, 2, 3)}
    with pytest.raises(SecAggError, match="node 1 sent a malformed share of node 3"):
        server.receive_unmask(1, {**answers[1], 3: b"short"})
    for i in (1, 2, 3):  # the refused reply left nothing behind: node 1 can still answer
        server.receive_unmask(i, answers[i])
    total, _ = server.finish()
    assert np.array_equal(total, 3 * quantize(np.ones(5), params.clip, params.quant_bits))
