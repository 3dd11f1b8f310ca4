"""RelayKeys: the server vouches for a relay's per-run key (docs/relay.md, "Sealing").

A relay's devices seal their replies to the relay, and a device seals only to a key the server
signed. The relay makes a fresh X25519 key per run and keeps its private half; this service signs
an ordinary aggregator announcement for the public half. Who may ask: a TLS-verified, unrevoked
certificate with the relay role (:func:`fedge.security.is_relay`), for a run that is pending or
running. Every decision is audited.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from fedge.errors import FedgeError
from fedge.protos.v1 import relay_pb2, relay_pb2_grpc
from fedge.security import Pki, is_relay
from fedge.security.seal import announce_key
from fedge.server.audit import AuditLog
from fedge.server.events import RunState
from fedge.server.sealing import ANNOUNCEMENT_TTL
from fedge.server.store import Store
from fedge.server.tls import Gate, peer_of

_LIVE = (RunState.PENDING, RunState.RUNNING)


class RelayKeyService(relay_pb2_grpc.RelayKeysServicer):
    """Signs relays' per-run public keys with the server key (held by the server process)."""

    def __init__(self, pki_dir: Path, store: Store, gate: Gate, audit: AuditLog) -> None:
        self._signing_key = Pki.open(pki_dir).signing_key()
        self._store, self._gate, self._audit = store, gate, audit

    def Announce(  # noqa: N802 (gRPC method name)
        self, request: relay_pb2.RelayKeyRequest, context: grpc.ServicerContext
    ) -> relay_pb2.RelayKeyReply:
        peer = peer_of(context)
        name = peer.name if peer else ""
        problem = ""
        if peer is None or not is_relay(peer.cert_pem):
            problem = "not a relay certificate"
        elif self._gate.revoked(peer):
            problem = "certificate revoked"
        if problem:
            self._audit.write("relay-key-refused", node=name, peer=context.peer(), reason=problem)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, problem)
        run = self._store.run(request.run_id)
        if run is None or run.state not in _LIVE:
            reason = f"run {request.run_id} is not running"
            self._audit.write("relay-key-refused", node=name, run_id=request.run_id, reason=reason)
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, reason)
        try:
            announcement = announce_key(
                request.run_id, request.x25519_public, self._signing_key, ANNOUNCEMENT_TTL
            )
        except FedgeError as exc:  # SealError: not a 32-byte key
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.message[:200])
        self._audit.write("relay-key", node=name, run_id=request.run_id, key_id=announcement.key_id)
        return relay_pb2.RelayKeyReply(announcement=announcement.SerializeToString())
