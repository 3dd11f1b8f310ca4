"""The fedge server process: gRPC server with the Fleet and Control services.

One ``grpc.aio`` server on one event loop (:class:`fedge.server.eventloop.LoopThread`): Fleet
streams are coroutines, so holding 10,000 devices costs no thread each; the Control API and
health checks keep their synchronous handlers, run on a small pool beside the loop.

Binding to port 0 is allowed; the bound address is written to ``<state_dir>/address`` so that
tools (``fedge simulate``, tests) never race for a free port.
"""

from __future__ import annotations

import logging
import resource
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2_grpc

from fedge import accel
from fedge.atomic import private_dir, write_text
from fedge.chunks import FrameLimits, InflightBudget, fresh_spool
from fedge.config import ServerConfig, require_insecure_allowed, split_address
from fedge.errors import FedgeError
from fedge.protos.v1 import control_pb2_grpc, enroll_pb2_grpc, fleet_pb2_grpc, relay_pb2_grpc
from fedge.security import Pki
from fedge.server.admission import CONTROL_THREADS, StreamAdmission
from fedge.server.audit import AuditLog
from fedge.server.control import ControlService
from fedge.server.enroll import EnrollmentService
from fedge.server.eventloop import LoopThread
from fedge.server.exports import RunExports
from fedge.server.fleet import FleetService
from fedge.server.lockout import Lockout
from fedge.server.models import ModelHub
from fedge.server.relay_keys import RelayKeyService
from fedge.server.router import Router
from fedge.server.runs import RunManager
from fedge.server.store import Store
from fedge.server.tls import Gate, server_credentials

if TYPE_CHECKING:
    from fedge.server.metrics import ServerMetrics

log = logging.getLogger("fedge.server")

GRPC_OPTIONS = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.so_reuseport", 0),
]


class FedgeServer:
    """Owns the store, router, run manager and the gRPC server; start/stop as a unit."""

    def __init__(self, cfg: ServerConfig, verbosity: int = 0) -> None:
        self.pki_dir = None if cfg.insecure or not cfg.pki_dir else Path(cfg.pki_dir).resolve()
        require_insecure_allowed(cfg.address, cfg.insecure, self.pki_dir is not None, "pass --pki-dir DIR")
        self.cfg = cfg
        # Everything that can be wrong in a config is checked before anything is created: a
        # server that refuses to start leaves no state directory or database behind.
        self.device = accel.resolve(cfg.device)
        for address in (cfg.address, cfg.enroll_address, cfg.metrics_address):
            if address:
                split_address(address)
        if cfg.enroll_address and self.pki_dir is None:
            raise FedgeError("enrollment needs the PKI", "pass --pki-dir together with --enroll-address")
        self._creds = server_credentials(self.pki_dir) if self.pki_dir else None
        signing_pub = Pki(self.pki_dir).signing_public_key() if self.pki_dir else None
        self.state_dir = private_dir(Path(cfg.state_dir).resolve())
        self.store = Store(self.state_dir / "fedge.db")
        interrupted = self.store.mark_interrupted()
        if interrupted:
            log.warning(
                "runs interrupted by the previous server exit: %s (continue one with `fedge run resume ID`)",
                ", ".join(map(str, interrupted)),
            )
        self.router = Router()
        self.audit = AuditLog(self.state_dir / "audit.jsonl")
        self.models = ModelHub(self.state_dir, self.router, self.audit, signing_pub)
        self.exports = RunExports(self.models, str(self.pki_dir or ""))
        self.runs = RunManager(
            self.store,
            self.router,
            self.state_dir,
            cfg.node_wait_timeout,
            verbosity,
            self.pki_dir,
            self.exports,
            self.device,
        )
        self.metrics: ServerMetrics | None = None  # Prometheus /metrics, opt-in (--metrics-address)
        if cfg.metrics_address:
            from fedge.server.metrics import ServerMetrics

            self.metrics = ServerMetrics(self.router, self.store)
            self.runs.on_event = self.metrics.on_event
        raise_open_files_limit()
        self._loop = LoopThread()
        self._grpc = self._loop.call(lambda: _aio_server(cfg.max_frame_bytes))
        self.limits = FrameLimits(cfg.max_frame_bytes, cfg.max_message_bytes, cfg.max_inflight_bytes)
        self.gate = Gate(self.pki_dir, self.audit.write)
        self.admission = StreamAdmission(cfg.max_streams, cfg.hello_timeout, self.audit.write)
        self._fleet = fleet = FleetService(
            self.store,
            self.router,
            cfg.heartbeat_interval,
            cfg.liveness_timeout(),
            self.limits,
            self.audit,
            self.gate,
            self.admission,
            self.models,
            self.metrics,
            InflightBudget(cfg.max_total_inflight_bytes),
            spool=fresh_spool(self.state_dir / "spool"),  # replies wait on disk, not in memory
        )
        fleet_pb2_grpc.add_FleetServicer_to_server(fleet, self._grpc)
        control_pb2_grpc.add_ControlServicer_to_server(
            ControlService(self.store, self.router, self.runs, self.gate), self._grpc
        )
        if self.pki_dir is not None:  # relays' per-run keys (fedge.server.relay_keys, docs/relay.md)
            relay_pb2_grpc.add_RelayKeysServicer_to_server(
                RelayKeyService(self.pki_dir, self.store, self.gate, self.audit), self._grpc
            )
        # grpc.health.v1 for container healthchecks and load balancers (`python -m fedge.sim.health`).
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._grpc)
        self.address = ""
        self.enroll_address = ""
        self.metrics_address = ""
        self._enroll: grpc.Server | None = None
        self._stopped = threading.Event()
        self._stopping = threading.Event()

    def start(self) -> str:
        """Bind and start serving (and the enrollment listener, if any); returns the bound ``host:port``."""
        creds = self._creds
        if self.metrics is not None:  # first: once <state>/address exists, metrics_address does too
            self.metrics_address = self.metrics.serve(self.cfg.metrics_address, self.state_dir)
        self.address = _bind(self._grpc, self.cfg.address, creds)
        self._loop.call(self._grpc.start)
        write_text(self.state_dir / "address", self.address + "\n")
        if self.cfg.enroll_address and self.pki_dir is not None:  # checked together in __init__
            self._enroll = grpc.server(
                futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="fedge-enroll")
            )
            enroll_pb2_grpc.add_EnrollmentServicer_to_server(
                EnrollmentService(
                    self.pki_dir, self.audit, Lockout(self.cfg.enroll_max_failures, self.cfg.enroll_lockout)
                ),
                self._enroll,
            )
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self._enroll)
            self.enroll_address = _bind(
                self._enroll,
                self.cfg.enroll_address,
                server_credentials(self.pki_dir, require_client_auth=False),
            )
            self._enroll.start()
            write_text(self.state_dir / "enroll_address", self.enroll_address + "\n")
        if self.gate.revocations is not None:
            threading.Thread(target=self._watch_revocations, daemon=True, name="fedge-revocations").start()
        return self.address

    def _watch_revocations(self, interval: float = 1.0, full_every: float = 30.0) -> None:
        """Drop live streams of devices whose certificate was revoked.

        Each tick reloads the list if its file changed; live streams are checked when the list
        changed since the last check (whoever reloaded it: the list object is shared with the
        connect path), and all of them every ``full_every`` seconds in any case. Why not every
        tick: that is O(streams) a second for nothing, most of the time. Why the periodic check:
        a stream admitted against the old list just as it changed could register after the check
        that the change triggered.
        """
        checked, last_full = -1, 0.0
        while not self._stopped.wait(interval):
            revocations = self.gate.revocations
            if revocations is None:
                continue
            revocations.reload_if_changed()
            now = time.monotonic()
            if revocations.generation == checked and now - last_full < full_every:
                continue
            checked, last_full = revocations.generation, now
            for session in self.router.sessions():
                if session.cert_pem and revocations.is_revoked(session.cert_pem):
                    self.audit.write("revoked-drop", node=session.name, node_id=session.node_id)
                    session.violation = "certificate revoked"
                    self.router.close(session, "certificate revoked")

    def wait(self) -> None:
        self._stopped.wait()

    def stop(self, grace: float = 2.0) -> None:
        """Stop accepting, end device streams, stop run workers. Once: a second call returns at once.

        Why once: ``fedge server start`` calls this from its SIGTERM/SIGINT handler, and a second
        signal arriving while the first stop runs must not stop a closed event loop again.
        """
        if self._stopping.is_set():
            return
        self._stopping.set()
        self.health.enter_graceful_shutdown()
        for session in self.router.sessions():
            session.close()
        self.runs.shutdown()
        self.exports.shutdown()
        if self._enroll is not None:
            self._enroll.stop(0)
        # Bounded: grpcio can leave a call whose request failed to deserialize un-finished, and
        # a server must still exit (seen with fuzzed frames).
        try:
            self._loop.submit(self._grpc.stop(grace)).result(timeout=grace + 3.0)
        except TimeoutError:
            log.warning("the gRPC server did not stop within %.0f s", grace + 3.0)
        self._loop.close()
        self._fleet.close()
        if self.metrics is not None:
            self.metrics.close()
        self.admission.stop()
        self.store.close()
        self._stopped.set()


async def _aio_server(max_frame_bytes: int) -> grpc.aio.Server:
    """The server, made on the loop that will run it (``grpc.aio`` binds to the running loop)."""
    return grpc.aio.server(
        migration_thread_pool=futures.ThreadPoolExecutor(
            max_workers=CONTROL_THREADS, thread_name_prefix="fedge-grpc"
        ),
        options=[
            ("grpc.max_send_message_length", max_frame_bytes),
            ("grpc.max_receive_message_length", max_frame_bytes),
            *GRPC_OPTIONS,
        ],
    )


def raise_open_files_limit() -> int:
    """Raise this process's soft open-files limit to its hard limit; returns the new soft limit.

    Each device stream is a socket: a common soft limit of 1,024 would cap the fleet far below
    what the event loop holds.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard != resource.RLIM_INFINITY:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            log.warning("cannot raise the open-files limit above %d", soft)
    return soft


def _bind(server: grpc.Server | grpc.aio.Server, address: str, creds: grpc.ServerCredentials | None) -> str:
    """Add a (TLS or plaintext) port; a clear error when it cannot be had."""
    host, _ = split_address(address)
    try:
        bound = server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise FedgeError(
            f"cannot listen on {address}: the port is in use or the address is not local",
            "pick another port with --address, or stop the process using it",
        )
    return f"{host}:{bound}"
