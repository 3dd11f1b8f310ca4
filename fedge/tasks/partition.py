"""Split a labelled dataset across simulated clients, IID or with controlled label skew.

Federated algorithms behave very differently on skewed data, so simulations must be able to
reproduce the usual benchmark splits exactly: every function here is deterministic in ``seed``
and returns disjoint, sorted index arrays.

Accepted specs:

- ``iid``: a random permutation cut into near-equal parts.
- ``dirichlet:<alpha>``: per class, proportions drawn from Dir(alpha); small alpha = strong
  skew (0.1 is extreme, 1.0 mild). A partition that already holds its fair share receives no
  more samples (the NIID-Bench balancing rule), and the draw is repeated until every partition
  has at least ``min(10, n // num_partitions)`` samples.
- ``shards:<n>``: sort by label, cut into ``num_partitions * n`` shards, deal ``n`` random
  shards to each partition (McMahan et al. 2017; ``shards:2`` gives ~2 classes per client).
"""

from __future__ import annotations

import numpy as np

from fedge.errors import FedgeError

SPEC_HINT = "use iid, dirichlet:<alpha> (e.g. dirichlet:0.5) or shards:<n> (e.g. shards:2)"
_MAX_DIRICHLET_DRAWS = 1000


def partition(labels: np.ndarray, num_partitions: int, spec: str, seed: int) -> list[np.ndarray]:
    """Return ``num_partitions`` disjoint index arrays into ``labels`` according to ``spec``."""
    labels = np.asarray(labels)
    kind, value = parse_spec(spec)
    if num_partitions < 1 or num_partitions > len(labels):
        raise FedgeError(
            f"cannot split {len(labels)} samples into {num_partitions} partitions",
            "use between 1 and as many partitions as there are samples",
        )
    rng = np.random.default_rng(seed)
    if kind == "iid":
        parts = np.array_split(rng.permutation(len(labels)), num_partitions)
    elif kind == "dirichlet":
        parts = _dirichlet(labels, num_partitions, value, rng)
    else:
        parts = _shards(labels, num_partitions, int(value), rng)
    return [np.sort(p).astype(np.int64) for p in parts]


def parse_spec(spec: str) -> tuple[str, float]:
    """``"dirichlet:0.5"`` → ``("dirichlet", 0.5)``; anything malformed is a ``FedgeError``."""
    kind, sep, raw = spec.strip().partition(":")
    if kind == "iid" and not sep:
        return kind, 0.0
    if kind in ("dirichlet", "shards") and sep:
        try:
            value = float(raw) if kind == "dirichlet" else int(raw)
        except ValueError:
            value = 0
        if value > 0 and np.isfinite(value):
            return kind, float(value)
    raise FedgeError(f"invalid partition spec '{spec}'", SPEC_HINT)


def _dirichlet(labels: np.ndarray, k: int, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    n = len(labels)
    min_size = min(10, n // k)
    classes = np.unique(labels)
    for _ in range(_MAX_DIRICHLET_DRAWS):
        parts: list[list[np.ndarray]] = [[] for _ in range(k)]
        sizes = np.zeros(k, dtype=np.int64)
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            share = rng.dirichlet(np.full(k, alpha)) * (sizes < n / k)
            cuts = (np.cumsum(share / share.sum()) * len(idx)).astype(np.int64)[:-1]
            for j, chunk in enumerate(np.split(idx, cuts)):
                parts[j].append(chunk)
                sizes[j] += len(chunk)
        if sizes.min() >= min_size:
            return [np.concatenate(p) for p in parts]
    raise FedgeError(
        f"dirichlet:{alpha} could not give each of {k} partitions {min_size} samples "
        f"in {_MAX_DIRICHLET_DRAWS} draws",
        "raise alpha or use fewer partitions",
    )


def _shards(labels: np.ndarray, k: int, per_client: int, rng: np.random.Generator) -> list[np.ndarray]:
    num_shards = k * per_client
    if num_shards > len(labels):
        raise FedgeError(
            f"shards:{per_client} needs {num_shards} shards but there are only {len(labels)} samples",
            "use fewer shards per client or fewer partitions",
        )
    # Sort by label; ties in random order so shards of one class differ between seeds.
    order = np.lexsort((rng.permutation(len(labels)), labels))
    shards = np.array_split(order, num_shards)
    dealt = rng.permutation(num_shards).reshape(k, per_client)
    return [np.concatenate([shards[s] for s in row]) for row in dealt]
