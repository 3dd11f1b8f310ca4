"""Parameter rules: which (n, k, t, clip, bits) are safe, and the round tag every key is bound to.

All checks live here so a bad configuration is refused once, before any key is generated, with a
message that says what is wrong and a hint that says how to fix it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedge.security.secagg._errors import SecAggError

MAX_NODE_ID = 2**64  #: node ids are encoded as 8 bytes in every KDF info and AEAD associated data
_TAG_LABEL = b"fedge-secagg/v1/round"


def check_node_id(node: int) -> int:
    """Return ``node`` if it can be encoded (1 ≤ node < 2^64), else raise.

    Ids feed fixed-width encodings and Shamir evaluation points, where 0 would be the secret itself.
    """
    if isinstance(node, bool) or not isinstance(node, int) or not 0 < node < MAX_NODE_ID:
        raise SecAggError(f"invalid node id {node!r}", "node ids must be integers in [1, 2^64)")
    return node


def id_bytes(node: int) -> bytes:
    return check_node_id(node).to_bytes(8, "big")


def round_tag(run_id: int, server_round: int) -> bytes:
    """Bytes binding every derived key and every encrypted share to one run and one round.

    Without it a share or mask from round r could be replayed into round r+1 of the same run, or into
    another run, where the same node keys would otherwise derive the same secrets.
    """
    for name, value in (("run id", run_id), ("server round", server_round)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**64:
            raise SecAggError(
                f"invalid {name} {value!r} for a secagg round tag", "use an integer in [0, 2^64)"
            )
    return _TAG_LABEL + run_id.to_bytes(8, "big") + server_round.to_bytes(8, "big")


@dataclass(frozen=True)
class SecAggParams:
    """Resolved parameters of one SecAgg+ round; build it with :func:`resolve_params`, which checks them.

    Parameters
    ----------
    num_clients : int
        Clients sampled this round (n). Bounds the quantized sum, so it must be the real count.
    k : int
        Neighbours per client: the degree of the masking graph. Pairwise masks and shares only go to
        neighbours, which is what makes SecAgg+ cost O(k) per client instead of O(n).
    t : int
        Shamir threshold: shares needed to rebuild a client's secret. ``t > k/2`` so the server can
        never collect both a client's self-mask shares and its pairwise-mask shares.
    clip : float
        Every element of the (already weighted) vector is clipped to [-clip, clip] before quantizing.
    quant_bits : int
        Bits per quantized element; ``num_clients * (2^bits - 1)`` must stay below 2^32.
    """

    num_clients: int
    k: int
    t: int
    clip: float
    quant_bits: int

    def max_dropouts(self) -> int:
        """Neighbours a client may lose (at any stage) while its secrets stay recoverable: ``k - t``."""
        return self.k - self.t


def max_quant_bits(num_clients: int) -> int:
    """Largest bits with ``num_clients * (2^bits - 1) < 2^32`` (0 if even one bit overflows)."""
    limit = (2**32 - 1) // num_clients  # largest allowed 2^bits - 1
    return min(31, (limit + 1).bit_length() - 1)


def _default_k(n: int) -> int:
    """Smallest even number ≥ 2·ceil(log2 n), capped at n-1: a complete graph for small n."""
    k = 2 * math.ceil(math.log2(n))
    return min(n - 1, k + k % 2)


def resolve_params(num_clients: int, k: int, t: int, clip: float, quant_bits: int) -> SecAggParams:
    """Fill in automatic values (``k=0``, ``t=0``) and refuse unsafe or impossible setups.

    Parameters
    ----------
    num_clients : int
        Clients sampled this round.
    k : int
        Neighbours per client; 0 = ``min(n-1, smallest even ≥ 2·ceil(log2 n))``. An odd k with an odd
        n has no k-regular graph, so it becomes k+1.
    t : int
        Shamir threshold; 0 = ``k // 2 + 1`` (the smallest safe value, tolerating the most dropouts).
    clip : float
        Element-wise clipping range.
    quant_bits : int
        Bits per quantized element (a run's default: ``RunSettings.quant_bits``).

    Raises
    ------
    SecAggError
        With a one-line message and a hint, for fewer than 3 clients, an impossible k or t, a t that
        would let the server unmask a single client, bad clip/bits, or a sum that overflows uint32.
    """
    n, note = num_clients, ""
    if n < 3:
        raise SecAggError(
            f"secure aggregation needs at least 3 clients per round, got {n}",
            "raise --min-clients to 3 or more and start more clients; "
            "with 2, each could learn the other's update",
        )
    if k == 0:
        k = _default_k(n)
    elif k < 2:
        raise SecAggError(
            f"k={k} neighbours is too few for secure aggregation", "use k >= 2, or 0 for automatic"
        )
    elif k > n - 1:
        raise SecAggError(
            f"k={k} neighbours is impossible with {n} clients (at most {n - 1})",
            f"use k <= {n - 1}, or 0 for automatic",
        )
    elif k % 2 and n % 2:  # no k-regular graph has an odd degree and an odd number of nodes
        note = f"; k={k} became {k + 1} since an odd k needs an even number of clients"
        k += 1
    if t == 0:
        t = k // 2 + 1
    elif t > k:
        raise SecAggError(
            f"threshold t={t} exceeds k={k} neighbours: no secret could ever be recovered",
            f"use t between {k // 2 + 1} and {k}, or 0 for automatic{note}",
        )
    elif 2 * t <= k:
        raise SecAggError(
            f"t={t} is too small for k={k}: a server could collect both a client's self-mask and "
            f"pairwise-mask shares; need t > k/2",
            f"use t >= {k // 2 + 1}, or 0 for automatic{note}",
        )
    if not math.isfinite(clip) or clip <= 0:
        raise SecAggError(f"clip={clip} must be a positive finite number", "use e.g. clip=8.0")
    if not 1 <= quant_bits <= 31:
        raise SecAggError(f"quant-bits={quant_bits} must be between 1 and 31", "use e.g. --quant-bits 22")
    if n * (2**quant_bits - 1) >= 2**32:
        best = max_quant_bits(n)
        raise SecAggError(
            f"quant-bits={quant_bits} overflows uint32 with {n} clients",
            f"lower --quant-bits to {best} or less" if best else "sample fewer clients per round",
        )
    return SecAggParams(num_clients=n, k=k, t=t, clip=float(clip), quant_bits=quant_bits)
