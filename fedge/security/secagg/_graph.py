"""The masking graph: a k-regular (Harary / circulant) graph over a seeded shuffle of the node ids.

A circulant graph on a shuffled ring gives every node exactly k neighbours, is symmetric by
construction, and the shuffle keeps an adversary from choosing who neighbours whom by picking node
ids. The shuffle uses SHAKE-256 of the seed rather than ``random`` or numpy generators, whose
streams are not guaranteed stable across versions: anyone with the seed can recompute the graph.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from fedge.security.secagg._errors import SecAggError
from fedge.security.secagg._params import check_node_id


def _shuffled(ids: list[int], seed: bytes) -> list[int]:
    """Fisher-Yates with 64-bit draws from SHAKE-256(seed); the modulo bias is below n / 2^64."""
    stream = hashlib.shake_256(b"fedge-secagg/v1/graph" + seed).digest(8 * len(ids))
    out = list(ids)
    for i in range(len(out) - 1, 0, -1):
        j = int.from_bytes(stream[8 * i : 8 * i + 8], "big") % (i + 1)
        out[i], out[j] = out[j], out[i]
    return out


def build_graph(node_ids: Sequence[int], k: int, seed: bytes) -> dict[int, tuple[int, ...]]:
    """Deterministic k-regular neighbour sets for ``node_ids``.

    Parameters
    ----------
    node_ids : Sequence[int]
        Distinct node ids, in any order (they are sorted first, so order does not change the graph).
    k : int
        Degree. ``k >= n - 1`` gives the complete graph; an odd k with an odd n (impossible) gives
        degree k + 1.
    seed : bytes
        Shuffle seed; fresh per round so neighbourhoods change between rounds.

    Returns
    -------
    dict[int, tuple[int, ...]]
        node -> sorted neighbours (never itself); ``j in g[i]`` iff ``i in g[j]``.
    """
    ids = sorted(check_node_id(i) for i in node_ids)
    n = len(ids)
    if len(set(ids)) != n:
        raise SecAggError("duplicate node ids in the secagg graph", "sample each node once per round")
    if k < 1:
        raise SecAggError(f"graph degree k={k} must be at least 1", "use resolve_params() to choose k")
    if k >= n - 1:
        return {i: tuple(j for j in ids if j != i) for i in ids}
    if k % 2 and n % 2:
        k += 1
    ring = _shuffled(ids, seed)
    offsets = list(range(1, k // 2 + 1))
    if k % 2:  # n is even here: the opposite node is one extra, symmetric neighbour
        offsets.append(n // 2)
    graph: dict[int, tuple[int, ...]] = {}
    for pos, node in enumerate(ring):
        near = {ring[(pos + d) % n] for d in offsets} | {ring[(pos - d) % n] for d in offsets}
        graph[node] = tuple(sorted(near))
    return graph
