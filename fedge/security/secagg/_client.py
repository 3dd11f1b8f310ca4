"""One client's side of a SecAgg+ round: keys, encrypted shares, the masked input, unmask answers.

The session is a one-way state machine (advertise → share_keys → masked_input → unmask), each
stage allowed once: answering a second unmask request, or masking twice with different neighbour
sets, could hand the server both halves of a secret, which is exactly what the protocol forbids.
"""

from __future__ import annotations

import secrets
from collections.abc import Collection, Mapping

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from fedge.security.secagg._errors import SecAggError
from fedge.security.secagg._keys import open_shares, pair_seed, public_key, raw_public, seal_shares
from fedge.security.secagg._params import SecAggParams, check_node_id
from fedge.security.secagg._prg import prg
from fedge.security.secagg._quant import quantize
from fedge.security.secagg._shamir import SHARE_LEN, shamir_split

_STAGES = ("new", "advertised", "shared", "masked", "unmasked")


class ClientSession:
    """One client's state for one round; ``round_tag`` binds every KDF info and AEAD datum to run+round.

    Parameters
    ----------
    node_id : int
        This client's id (1 ≤ id < 2^64), as the server knows it.
    params : SecAggParams
        The round's resolved parameters (same on every client and the server).
    round_tag : bytes
        From :func:`round_tag`; fresh keys are generated per round anyway, the tag also stops replay.
    """

    def __init__(self, node_id: int, params: SecAggParams, round_tag: bytes) -> None:
        if not isinstance(round_tag, bytes) or not round_tag:
            raise SecAggError("the secagg round tag must be non-empty bytes", "use round_tag(run_id, round)")
        self.node_id = check_node_id(node_id)
        self.params = params
        self.round_tag = round_tag
        self._stage = "new"
        self._c_sk = X25519PrivateKey.generate()
        self._s_sk = X25519PrivateKey.generate()
        self._b = b""
        self._peers: dict[int, tuple[X25519PublicKey, X25519PublicKey]] = {}
        self._held: dict[int, tuple[bytes, bytes]] = {}  # src -> (b-share, s_sk-share) it sent us

    def _enter(self, stage: str) -> None:
        expected = _STAGES[_STAGES.index(stage) - 1]
        if self._stage != expected:
            raise SecAggError(
                f"secagg client {self.node_id}: '{stage}' requested in stage '{self._stage}'",
                "each stage runs once and in order: advertise, share_keys, masked_input, unmask",
            )
        self._stage = stage

    def advertise(self) -> tuple[bytes, bytes]:
        """Return ``(c_pk, s_pk)``: raw 32-byte X25519 public keys for share encryption and for masks."""
        self._enter("advertised")
        return raw_public(self._c_sk), raw_public(self._s_sk)

    def share_keys(self, neighbour_keys: Mapping[int, tuple[bytes, bytes]]) -> dict[int, bytes]:
        """Draw the self-mask seed b_i and send Shamir shares of b_i and s_sk_i, encrypted, to each neighbour.

        Parameters
        ----------
        neighbour_keys : Mapping[int, tuple[bytes, bytes]]
            node -> (c_pk, s_pk) of the neighbours that advertised; may be fewer than k, but at least t
            (otherwise the secrets could not be recovered if this client dropped) and at most k
            (more would let t shares be a minority, breaking the ``t > k/2`` guarantee).

        Returns
        -------
        dict[int, bytes]
            dst -> ciphertext, for the server to forward.
        """
        self._enter("shared")
        if self.node_id in neighbour_keys:
            raise SecAggError(
                f"secagg client {self.node_id} was offered its own keys as a neighbour's",
                "the server's key list is inconsistent",
            )
        if not self.params.t <= len(neighbour_keys) <= self.params.k:
            raise SecAggError(
                f"secagg client {self.node_id} got {len(neighbour_keys)} neighbours, needs "
                f"t={self.params.t} to k={self.params.k}",
                "too many clients dropped before sharing keys; lower t or sample more clients",
            )
        self._peers = {
            check_node_id(j): (public_key(c, j), public_key(s, j)) for j, (c, s) in neighbour_keys.items()
        }
        self._b = secrets.token_bytes(32)
        ids = sorted(self._peers)
        b_shares = shamir_split(self._b, self.params.t, ids)
        s_shares = shamir_split(self._s_sk.private_bytes_raw(), self.params.t, ids)
        return {
            j: seal_shares(
                self._c_sk, self._peers[j][0], self.round_tag, self.node_id, j, b_shares[j] + s_shares[j]
            )
            for j in ids
        }

    def masked_input(self, vector: np.ndarray, shares_in: Mapping[int, bytes]) -> np.ndarray:
        """Quantize ``vector``, add the self mask and a pairwise mask per sender in ``shares_in``.

        Parameters
        ----------
        vector : np.ndarray
            Float values, already weighted by the caller; clipped here to ±clip; flattened.
        shares_in : Mapping[int, bytes]
            src -> ciphertext forwarded by the server: the neighbours that completed share_keys. A
            pairwise mask is added with a neighbour iff its shares arrived, which is also how the
            server decides whose masks to cancel, so both sides agree without another message.

        Returns
        -------
        np.ndarray
            uint32 ``y_i = q_i + PRG(b_i) + Σ_{j>i} PRG(s_ij) - Σ_{j<i} PRG(s_ij)`` (mod 2^32).
        """
        self._enter("masked")
        if len(shares_in) < self.params.t:
            raise SecAggError(
                f"secagg client {self.node_id} received shares from {len(shares_in)} neighbours, "
                f"needs t={self.params.t}",
                "too many clients dropped while sharing keys",
            )
        for src, blob in shares_in.items():
            if src not in self._peers:
                raise SecAggError(
                    f"secagg client {self.node_id} got shares from non-neighbour {src}",
                    "the server forwarded shares it did not announce keys for",
                )
            plain = open_shares(self._c_sk, self._peers[src][0], self.round_tag, src, self.node_id, blob)
            if len(plain) != 2 * SHARE_LEN:
                raise SecAggError(
                    f"shares from node {src} have the wrong length",
                    f"node {src} is not a compatible secagg client",
                )
            self._held[src] = (plain[:SHARE_LEN], plain[SHARE_LEN:])
        y = quantize(np.ravel(vector), self.params.clip, self.params.quant_bits)
        scratch = np.empty(y.size, dtype=np.uint32)
        np.add(y, prg(self._b, y.size, out=scratch), out=y)
        for src in sorted(shares_in):
            seed = pair_seed(self._s_sk, self._peers[src][1], self.round_tag, self.node_id, src)
            mask = prg(seed, y.size, out=scratch)
            (np.add if src > self.node_id else np.subtract)(y, mask, out=y)
        return y

    def unmask(self, survivors: Collection[int], dropped: Collection[int]) -> dict[int, bytes]:
        """Answer the server's one unmask request: b-shares of survivors, s_sk-shares of dropped nodes.

        Only nodes this client holds shares of are answered. Refused if a node is in both sets (that
        would reveal both masks of one client), if this client is called dropped (it is evidently
        alive: the server is lying), or if fewer than t survivors remain (the sum would be too small
        to hide individual updates).
        """
        self._enter("unmasked")
        alive, gone = set(survivors), set(dropped)
        both = alive & gone
        if both:
            raise SecAggError(
                f"secagg client {self.node_id} refused to unmask: node {min(both)} is listed as both "
                "survivor and dropped",
                "the server's unmask request is inconsistent",
            )
        if self.node_id in gone:
            raise SecAggError(
                f"secagg client {self.node_id} refused to unmask: it was listed as dropped",
                "the server's unmask request is inconsistent",
            )
        if len(alive) < self.params.t:
            raise SecAggError(
                f"secagg client {self.node_id} refused to unmask: {len(alive)} survivors, "
                f"needs t={self.params.t}",
                "too many clients dropped during masked input",
            )
        return {
            src: b_share if src in alive else s_share
            for src, (b_share, s_share) in self._held.items()
            if src in alive or src in gone
        }
