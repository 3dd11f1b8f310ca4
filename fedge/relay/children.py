"""The relay's side towards its devices: the server's own Fleet service on the relay's listener.

Nothing here is new protocol: a device connects to a relay exactly as to a server (same
``Fleet.Connect`` stream, heartbeats, frame limits, per-identity admission), so any daemon can sit
under a relay unchanged. The relay's certificate (relay role: serverAuth and its name as a DNS
name, :mod:`fedge.security._x509`) is its TLS server certificate; devices check it against the
federation's CA with ``--server-name <relay name>``.

What a relay does *not* have: the server's revocation list (``revoked.json`` lives with the CA).
A ``revoked.json`` copied into the relay's state directory is checked whenever a device
connects; distributing it is left to the operator (docs/relay.md, "Limits").
"""

from __future__ import annotations

import logging
from pathlib import Path

import grpc

from fedge.atomic import private_dir, write_text
from fedge.chunks import FrameLimits, InflightBudget, fresh_spool
from fedge.config import ServerConfig, split_address
from fedge.errors import FedgeError
from fedge.protos.v1 import fleet_pb2_grpc, relay_pb2_grpc
from fedge.server.admission import StreamAdmission
from fedge.server.audit import AuditLog
from fedge.server.eventloop import LoopThread
from fedge.server.fleet import FleetService
from fedge.server.router import Router
from fedge.server.service import _aio_server, _bind
from fedge.server.store import Store
from fedge.server.tls import Gate

log = logging.getLogger("fedge.relay")

#: File in the children state dir holding the bound ``host:port`` (port 0 allowed).
ADDRESS_FILE = "address"


class Children:
    """The relay's devices: their streams (``router``), node ids (``store``) and audit log.

    Parameters
    ----------
    cfg : ServerConfig
        Listener and limits towards the devices (``address``, ``state_dir``, heartbeats, frame
        and stream limits: the server's settings, the same defaults).
    tls_dir : Path | None
        The relay's enrolled state directory (``tls.pem``, ``tls.key``, ``ca.pem``); None only
        for a plaintext federation on loopback.
    """

    def __init__(self, cfg: ServerConfig, tls_dir: Path | None) -> None:
        self.cfg = cfg
        split_address(cfg.address)
        self.state_dir = private_dir(Path(cfg.state_dir).resolve())
        self.store = Store(self.state_dir / "fedge.db")
        self.router = Router()
        self.audit = AuditLog(self.state_dir / "audit.jsonl")
        self._tls_dir = tls_dir
        self._admission = StreamAdmission(cfg.max_streams, cfg.hello_timeout, self.audit.write)
        self._fleet = fleet = FleetService(
            self.store,
            self.router,
            cfg.heartbeat_interval,
            cfg.liveness_timeout(),
            FrameLimits(cfg.max_frame_bytes, cfg.max_message_bytes, cfg.max_inflight_bytes),
            self.audit,
            Gate(tls_dir, self.audit.write),
            self._admission,
            budget=InflightBudget(cfg.max_total_inflight_bytes),
            # Large replies of the subtree wait on disk until the relay's grid folds them, one at
            # a time (issue 16). Instructions are not spooled: the relay holds each in memory
            # anyway, as the message its parent sent, and its streams chunk that without copies.
            spool=fresh_spool(self.state_dir / "spool"),
        )
        # The server's own Fleet service, on an event loop of the relay's (no thread per device).
        self._loop = LoopThread()
        self._grpc = self._loop.call(lambda: _aio_server(cfg.max_frame_bytes))
        fleet_pb2_grpc.add_FleetServicer_to_server(fleet, self._grpc)
        self.address = ""

    def serve_keys(self, keys: relay_pb2_grpc.RelayKeysServicer) -> None:
        """Answer ``RelayKeys`` for relays below this one (:class:`fedge.relay.keys.KeyProxy`).

        Call before :meth:`start` (gRPC takes services only then).
        """
        relay_pb2_grpc.add_RelayKeysServicer_to_server(keys, self._grpc)

    def start(self) -> str:
        """Bind, serve, write ``<state>/address``; returns the bound ``host:port``."""
        creds = None
        if self._tls_dir is not None:
            root = self._tls_dir
            creds = grpc.ssl_server_credentials(
                [((root / "tls.key").read_bytes(), (root / "tls.pem").read_bytes())],
                root_certificates=(root / "ca.pem").read_bytes(),
                require_client_auth=True,
            )
        try:
            address = _bind(self._grpc, self.cfg.address, creds)
        except FedgeError:
            raise FedgeError(
                f"the relay cannot listen on {self.cfg.address}: the port is in use or not local",
                "pick another port with --listen",
            ) from None
        self._loop.call(self._grpc.start)
        self.address = address
        write_text(self.state_dir / ADDRESS_FILE, self.address + "\n")
        log.info("relay listening for devices on %s", self.address)
        return self.address

    def stop(self, grace: float = 2.0) -> None:
        """End every device stream and stop listening."""
        for session in self.router.sessions():
            session.close()
        try:
            self._loop.submit(self._grpc.stop(grace)).result(timeout=grace + 3.0)
        except TimeoutError:
            log.warning("the relay's gRPC server did not stop within %.0f s", grace + 3.0)
        self._loop.close()
        self._fleet.close()
        self._admission.stop()
        self.store.close()
