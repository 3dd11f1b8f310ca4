"""SecAgg+ secure aggregation (Bell et al., CCS 2020; Bonawitz et al., CCS 2017): the pure protocol core.

The server learns the sum of the clients' (quantized) update vectors and nothing else about any
single one. This package is transport-free: :class:`ClientSession` and :class:`ServerSession` are
driven by the Flower glue (a strategy wrapper on the server, a client mod on the edge), one
message exchange per stage.

Protocol (one round, n sampled clients on a k-regular graph G)
------------------------------------------------------------
1. advertise-keys: client i sends two fresh X25519 public keys, ``c_pk`` (share encryption) and
   ``s_pk`` (pairwise masks). U1 = clients that did.
2. share-keys: the server sends i the keys of its neighbours in U1. Client i draws a self-mask seed
   b_i, Shamir-splits b_i and its private key s_sk_i t-of-|N(i) ∩ U1| among those neighbours, and
   encrypts each neighbour's pair of shares with AES-256-GCM under HKDF(X25519(c_sk_i, c_pk_j)),
   the associated data binding (round tag, src, dst). U2 = clients that did.
3. masked-input: the server forwards to i the ciphertexts from its neighbours in U2 (only pairs that
   addressed each other, so masking is symmetric). Client i sends, mod 2^32,
   ``y_i = q_i + PRG(b_i) + Σ_{j∈S, j>i} PRG(s_ij) - Σ_{j∈S, j<i} PRG(s_ij)``, S = the senders it got,
   ``s_ij = HKDF(X25519(s_sk_i, s_pk_j), round tag ‖ sorted(i, j))``, q_i = quantize(vector).
   The server adds each y_i into one running uint32 sum as it arrives. U3 = clients that did.
4. unmask: the server sends (U3, D = U2 - U3). Each survivor returns, per neighbour it holds shares
   of, the b-share if that neighbour is in U3 or the s_sk-share if it is in D, never both. The server
   rebuilds b_i for i ∈ U3 and s_sk_i for i ∈ D (t shares each), subtracts PRG(b_i) and the pairwise
   masks left dangling between each dropped node and its surviving neighbours: Σ_{i∈U3} q_i remains.

The PRG is an AES-256-CTR keystream; Shamir works over GF(2^521 - 1); only ``cryptography``
primitives are used (X25519, HKDF-SHA256, AES-GCM, AES-CTR).

Threat model
------------
Semi-honest (honest-but-curious) server, plus any coalition of fewer than t of a client's
neighbours: they see only masked inputs and at most one kind of share per client, hence the sum.
Clients may drop at any stage; up to k - t of a client's neighbours may drop without losing the
round. Out of scope: a *malicious* server that substitutes public keys or lies about who dropped to
different clients (that needs signed keys and a consistency round, as in the original paper's
active-security variant). Key authenticity here rests on mTLS to the server (layer 1): every key
and share reaches the server over an authenticated channel bound to the device certificate, and the
server is trusted to relay them faithfully. The protocol hides updates, it does not check them:
a client can still send any value within ±clip (layer 5 and DP clipping bound its influence).

Parameter rules (:func:`resolve_params`)
----------------------------------------
- n ≥ 3 (with 2, each client could subtract its own update from the sum).
- k: 2 ≤ k ≤ n - 1; default ``min(n - 1, smallest even ≥ 2·ceil(log2 n))``; odd k with odd n → k + 1.
- t: k/2 < t ≤ k; default ``k // 2 + 1``. ``t > k/2`` means no server request can gather t b-shares
  *and* t s_sk-shares of one client from honest neighbours.
- clip > 0, 1 ≤ quant_bits ≤ 31, and ``n · (2^quant_bits - 1) < 2^32`` so the sum cannot wrap.
"""

from fedge.security.secagg._client import ClientSession
from fedge.security.secagg._errors import SecAggError
from fedge.security.secagg._graph import build_graph
from fedge.security.secagg._params import SecAggParams, resolve_params, round_tag
from fedge.security.secagg._prg import prg
from fedge.security.secagg._quant import dequantize, quantize
from fedge.security.secagg._server import ServerSession
from fedge.security.secagg._shamir import shamir_combine, shamir_split

__all__ = [
    "ClientSession",
    "SecAggError",
    "SecAggParams",
    "ServerSession",
    "build_graph",
    "dequantize",
    "prg",
    "quantize",
    "resolve_params",
    "round_tag",
    "shamir_combine",
    "shamir_split",
]
