"""A relay's per-run keys: made here, vouched for by the server, used to open its devices' replies.

A device seals only to keys announced under the server's signature (it pins that key at
enrollment). So for each run it serves the relay makes a fresh X25519 key, keeps the private half
in memory only, and asks the server (``RelayKeys.Announce``, :mod:`fedge.server.relay_keys`) to
sign the public half. The announcement is checked here too (signature, run, and that it names our
key) before any device is told to seal to it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key

from fedge.errors import FedgeError
from fedge.protos.v1 import envelope_pb2, relay_pb2, relay_pb2_grpc
from fedge.security import is_relay
from fedge.security.seal import AggregatorKey, verify_announcement
from fedge.server.audit import AuditLog
from fedge.server.sealing import ReplyOpener
from fedge.server.tls import peer_of

#: Runs whose keys stay in memory (a relay serves a few runs at a time; an old one is re-keyed).
KEEP_RUNS = 8
ANNOUNCE_TIMEOUT = 30.0


class RunKeys:
    """Per-run relay keys and their server-signed announcements.

    Parameters
    ----------
    channel : Callable[[], grpc.Channel]
        A new mTLS channel to the parent server (the relay's own certificate).
    state_dir : Path
        The relay's state directory: ``server-signing.pub`` pinned at enrollment.
    """

    def __init__(self, channel: Callable[[], grpc.Channel], state_dir: Path) -> None:
        pub = state_dir / "server-signing.pub"
        if not pub.is_file():
            raise FedgeError(f"no server signing key in {state_dir}", "enroll the relay again")
        key = load_pem_public_key(pub.read_bytes())
        if not isinstance(key, Ed25519PublicKey):
            raise FedgeError(f"{pub} is not an Ed25519 public key", "enroll the relay again")
        self._server_pub = key
        self._channel = channel
        self._lock = threading.Lock()
        self._openers: OrderedDict[int, ReplyOpener] = OrderedDict()

    def opener(self, run_id: int) -> ReplyOpener:
        """The opener of ``run_id``'s key (made and announced on first use)."""
        with self._lock:
            opener = self._openers.get(run_id)
            if opener is None:
                opener = self._openers[run_id] = self._announce(run_id)
                while len(self._openers) > KEEP_RUNS:
                    self._openers.popitem(last=False)
            self._openers.move_to_end(run_id)
            return opener

    def _announce(self, run_id: int) -> ReplyOpener:
        private = X25519PrivateKey.generate()
        public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        request = relay_pb2.RelayKeyRequest(run_id=run_id, x25519_public=public)
        channel = self._channel()
        try:
            reply = relay_pb2_grpc.RelayKeysStub(channel).Announce(request, timeout=ANNOUNCE_TIMEOUT)
        except grpc.RpcError as exc:
            details = getattr(exc, "details", lambda: "")()
            raise FedgeError(
                f"the server did not announce this relay's key for run {run_id}: {details}",
                "check that the relay's certificate has the relay role and the run is running",
            ) from None
        finally:
            channel.close()
        verify_announcement(reply.announcement, self._server_pub, run_id)
        ann = envelope_pb2.AggregatorAnnouncement.FromString(reply.announcement)
        if ann.x25519_public != public:
            raise FedgeError("the server announced another key than this relay's", "restart the relay")
        key = AggregatorKey(run_id, ann.key_id, private, ann.not_after)
        return ReplyOpener.held(run_id, key, reply.announcement)


class KeyProxy(relay_pb2_grpc.RelayKeysServicer):
    """``RelayKeys`` on a relay's own listener, for relays below it (a tree of more than two levels).

    A relay under a relay asks its parent for its per-run key, as a device talks to its parent.
    Only the server can sign, so this relay passes the request up unchanged, after checking the
    caller holds a relay certificate; the server checks that again (the request is now this
    relay's, so the server vouches for a key of a relay it does not see: the chain of relay
    certificates, each checked by its parent, is what it trusts).
    """

    def __init__(self, channel: Callable[[], grpc.Channel], audit: AuditLog) -> None:
        self._channel, self._audit = channel, audit

    def Announce(  # noqa: N802 (gRPC method name)
        self, request: relay_pb2.RelayKeyRequest, context: grpc.ServicerContext
    ) -> relay_pb2.RelayKeyReply:
        peer = peer_of(context)
        name = peer.name if peer else ""
        if peer is None or not is_relay(peer.cert_pem):
            self._audit.write("relay-key-refused", node=name, reason="not a relay certificate")
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "not a relay certificate")
        channel = self._channel()
        try:
            reply = relay_pb2_grpc.RelayKeysStub(channel).Announce(request, timeout=ANNOUNCE_TIMEOUT)
        except grpc.RpcError as exc:
            code = getattr(exc, "code", lambda: grpc.StatusCode.UNAVAILABLE)()
            context.abort(code, f"parent: {getattr(exc, 'details', lambda: '')()}")
        finally:
            channel.close()
        self._audit.write("relay-key-forwarded", node=name, run_id=request.run_id)
        return reply
