"""The server's side of a SecAgg+ round: relay keys and shares, fold masked inputs, remove the masks.

The server only ever holds the running uint32 sum of masked inputs: each one is added in place as
it arrives, so no individual vector (masked or not) is kept, and unmasking yields only the sum.

Stages close in order (advertise, share-keys, masked-input, unmask): the first ``keys_for`` call
fixes U1, the first ``shares_for`` fixes U2, ``unmask_request`` fixes U3. Late replies are then
refused, because masks were already agreed against the fixed sets and anything added afterwards
could not be cancelled.

Every ``receive_*`` method is all-or-nothing: when it raises :class:`SecAggError` (late, duplicate,
malformed), nothing of that reply was recorded, so the caller can count the node as dropped and
carry on with the round.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedge.security.secagg._errors import SecAggError
from fedge.security.secagg._graph import build_graph
from fedge.security.secagg._keys import SHARES_CT_LEN, pair_seed, public_key
from fedge.security.secagg._params import SecAggParams
from fedge.security.secagg._prg import prg
from fedge.security.secagg._shamir import SHARE_LEN, shamir_combine

_STAGES = ("advertise", "share-keys", "masked-input", "unmask", "finished")


class ServerSession:
    """Server state for one round.

    Parameters
    ----------
    params : SecAggParams
        From ``resolve_params(len(node_ids), ...)``; ``num_clients`` must equal the sample size, since
        the uint32 overflow check depends on it.
    node_ids : Sequence[int]
        The clients sampled this round.
    round_tag : bytes
        Same tag the clients use; needed to derive the pair seeds of dropped clients.
    graph_seed : bytes
        Fresh random bytes per round, so masking neighbourhoods change between rounds.
    """

    def __init__(
        self, params: SecAggParams, node_ids: Sequence[int], round_tag: bytes, graph_seed: bytes
    ) -> None:
        if len(node_ids) != params.num_clients:
            raise SecAggError(
                f"secagg parameters were resolved for {params.num_clients} clients, {len(node_ids)} sampled",
                "call resolve_params(len(node_ids), ...) for the actual sample",
            )
        self.params = params
        self.round_tag = round_tag
        self.graph: dict[int, tuple[int, ...]] = build_graph(node_ids, params.k, graph_seed)
        self._stage = "advertise"
        self._keys: dict[int, tuple[bytes, bytes]] = {}  # U1: node -> (c_pk, s_pk)
        self._cts: dict[int, dict[int, bytes]] = {}  # U2: src -> dst -> ciphertext
        self._sum: np.ndarray | None = None
        self._u3: set[int] = set()
        self._b_shares: dict[int, dict[int, bytes]] = {}  # survivor -> holder -> share of b
        self._s_shares: dict[int, dict[int, bytes]] = {}  # dropped -> holder -> share of s_sk
        self._responded: set[int] = set()

    # -- stage bookkeeping -----------------------------------------------------------------------

    def _at(self, stage: str, action: str) -> None:
        """Advance to ``stage`` if still before it; refuse ``action`` if already past it."""
        now, want = _STAGES.index(self._stage), _STAGES.index(stage)
        if now > want:
            raise SecAggError(
                f"secagg server: {action} arrived after the {stage} stage closed",
                "late replies cannot be used once masks were agreed; the node counts as dropped",
            )
        self._stage = stage

    def _member(self, node: int, group: Mapping[int, object] | set[int], name: str) -> None:
        if node not in group:
            raise SecAggError(
                f"secagg server: node {node} is not in {name}", "replies must follow the protocol order"
            )

    def _pairs(self, node: int) -> list[int]:
        """Neighbours ``node`` masks with: both in U2 and each addressed the other (so always symmetric)."""
        own = self._cts[node]
        return sorted(j for j in own if j in self._cts and node in self._cts[j])

    # -- protocol --------------------------------------------------------------------------------

    def receive_keys(self, node: int, c_pk: bytes, s_pk: bytes) -> None:
        """Record a node's advertised public keys (it joins U1)."""
        self._at("advertise", f"keys from node {node}")
        self._member(node, self.graph, "this round's sample")
        if node in self._keys:
            raise SecAggError(f"secagg server: node {node} advertised keys twice", "send one reply per stage")
        for raw in (c_pk, s_pk):
            public_key(raw, node)  # refuse malformed keys now, not when a neighbour trips over them
        self._keys[node] = (c_pk, s_pk)

    def keys_for(self, node: int) -> dict[int, tuple[bytes, bytes]]:
        """Public keys of ``node``'s neighbours in U1 (closes the advertise stage)."""
        self._at("share-keys", f"a key request for node {node}")
        self._member(node, self._keys, "U1 (nodes that advertised keys)")
        return {j: self._keys[j] for j in self.graph[node] if j in self._keys}

    def receive_shares(self, node: int, ciphertexts: Mapping[int, bytes]) -> None:
        """Store a node's encrypted shares (it joins U2); non-neighbour destinations are ignored."""
        self._at("share-keys", f"shares from node {node}")
        self._member(node, self._keys, "U1 (nodes that advertised keys)")
        if node in self._cts:
            raise SecAggError(f"secagg server: node {node} sent shares twice", "send one reply per stage")
        kept = {dst: ct for dst, ct in ciphertexts.items() if dst in self.graph[node]}
        if any(not isinstance(ct, bytes) or len(ct) != SHARES_CT_LEN for ct in kept.values()):
            raise SecAggError(
                f"secagg server: node {node} sent a malformed share ciphertext",
                "clients must send ClientSession.share_keys() unchanged",
            )
        self._cts[node] = kept

    def shares_for(self, node: int) -> dict[int, bytes]:
        """src -> ciphertext addressed to ``node``, one per src it masks with (closes share-keys)."""
        self._at("masked-input", f"a share request for node {node}")
        self._member(node, self._cts, "U2 (nodes that sent shares)")
        return {src: self._cts[src][node] for src in self._pairs(node)}

    def receive_masked(self, node: int, masked: np.ndarray) -> None:
        """Add a node's masked input into the running sum in place (it joins U3)."""
        self._at("masked-input", f"masked input from node {node}")
        self._member(node, self._cts, "U2 (nodes that sent shares)")
        if node in self._u3:
            raise SecAggError(
                f"secagg server: node {node} sent masked input twice", "send one reply per stage"
            )
        masked = np.asarray(masked)
        if masked.dtype != np.uint32 or masked.ndim != 1:
            raise SecAggError(
                f"secagg server: masked input from node {node} is {masked.dtype} {masked.shape}, "
                "not 1-D uint32",
                "clients must send ClientSession.masked_input() unchanged",
            )
        if self._sum is None:
            self._sum = masked.copy()
        elif masked.shape != self._sum.shape:
            raise SecAggError(
                f"secagg server: masked input from node {node} has {masked.size} elements, "
                f"expected {self._sum.size}",
                "all clients must mask the same model",
            )
        else:
            np.add(self._sum, masked, out=self._sum)
        self._u3.add(node)

    def unmask_request(self) -> tuple[list[int], list[int]]:
        """``(survivors U3, dropped U2 - U3)``, sorted, to send to every survivor (closes masked input)."""
        self._at("unmask", "an unmask request")
        self._check_survivors()
        return self.survivors, sorted(set(self._cts) - self._u3)

    def receive_unmask(self, node: int, shares: Mapping[int, bytes]) -> None:
        """Keep a survivor's shares of the nodes it masked with: b of survivors, s_sk of dropped nodes."""
        self._at("unmask", f"unmask shares from node {node}")
        self._member(node, self._u3, "U3 (nodes that sent masked input)")
        if node in self._responded:
            raise SecAggError(
                f"secagg server: node {node} answered the unmask request twice", "send one reply"
            )
        held = {target: shares[target] for target in self._pairs(node) if target in shares}
        for target, share in held.items():
            if not isinstance(share, bytes) or len(share) != SHARE_LEN:
                raise SecAggError(
                    f"secagg server: node {node} sent a malformed share of node {target}",
                    "clients must send ClientSession.unmask() unchanged",
                )
        self._responded.add(node)
        for target, share in held.items():
            store = self._b_shares if target in self._u3 else self._s_shares
            store.setdefault(target, {})[node] = share

    def finish(self) -> tuple[np.ndarray, list[int]]:
        """Remove every mask and return ``(Σ_{i∈U3} q_i mod 2^32, sorted survivors)``.

        Raises
        ------
        SecAggError
            If no masked input arrived, fewer than t survived, or some survivor's self-mask seed or some
            dropped node's mask key has fewer than t shares (the message names the node).
        """
        self._at("unmask", "finish")
        total = self._check_survivors()
        dropped = sorted(set(self._cts) - self._u3)
        self._count_shares(dropped, self._s_shares, "mask key of dropped")
        self._count_shares(self.survivors, self._b_shares, "self-mask seed of surviving")
        self._stage = "finished"
        # Rebuild every secret before touching the sum, so a bad share fails the round cleanly.
        seeds = [shamir_combine(self._b_shares[node]) for node in self.survivors]
        keys = {node: self._recover_key(node) for node in dropped}
        self._sum, scratch = None, np.empty(total.size, dtype=np.uint32)
        for seed in seeds:
            np.subtract(total, prg(seed, total.size, out=scratch), out=total)
        for node, s_sk in keys.items():
            for j in self._pairs(node):
                if j not in self._u3:
                    continue  # both dropped: neither mask is in the sum
                seed = pair_seed(s_sk, public_key(self._keys[j][1], j), self.round_tag, node, j)
                mask = prg(seed, total.size, out=scratch)
                # j added +mask for a larger neighbour id and -mask for a smaller one: undo exactly that
                (np.subtract if node > j else np.add)(total, mask, out=total)
        return total, self.survivors

    def _recover_key(self, node: int) -> X25519PrivateKey:
        """Rebuild a dropped node's s_sk and check it against the s_pk it advertised."""
        key = X25519PrivateKey.from_private_bytes(shamir_combine(self._s_shares[node]))
        if key.public_key().public_bytes_raw() != self._keys[node][1]:
            raise SecAggError(
                f"secagg: shares of dropped node {node}'s mask key do not match its advertised key",
                "a survivor sent corrupted shares",
            )
        return key

    def _count_shares(self, nodes: list[int], store: dict[int, dict[int, bytes]], what: str) -> None:
        t = self.params.t
        for node in nodes:
            have = len(store.get(node, {}))
            if have < t:
                raise SecAggError(
                    f"secagg: cannot reconstruct the {what} node {node}: {have} shares, need t={t}",
                    f"more than k-t={self.params.max_dropouts()} neighbours dropped; lower t or raise k",
                )

    def _check_survivors(self) -> np.ndarray:
        """The running sum, if enough masked inputs arrived to unmask it safely."""
        if self._sum is None:
            raise SecAggError("secagg: no masked input arrived this round", "all sampled clients dropped")
        if len(self._u3) < self.params.t:
            raise SecAggError(
                f"secagg: only {len(self._u3)} clients sent masked input, need t={self.params.t}",
                "too many clients dropped; a smaller sum could expose individual updates",
            )
        return self._sum

    @property
    def survivors(self) -> list[int]:
        """U3: nodes whose masked input is in the sum, sorted."""
        return sorted(self._u3)
