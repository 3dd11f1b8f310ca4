"""The fedge server process: gRPC server with the Fleet and Control services.

Binding to port 0 is allowed; the bound address is written to ``<state_dir>/address`` so that
tools (``fedge simulate``, tests) never race for a free port.
"""

from __future__ import annotations

import logging
import threading
from concurrent import futures
from pathlib import Path

import grpc

from fedge.atomic import write_text
from fedge.chunks import FrameLimits
from fedge.config import ServerConfig, require_insecure_allowed, split_address
from fedge.errors import FedgeError
from fedge.protos.v1 import control_pb2_grpc, fleet_pb2_grpc
from fedge.server.audit import AuditLog
from fedge.server.control import ControlService
from fedge.server.fleet import FleetService
from fedge.server.router import Router
from fedge.server.runs import RunManager
from fedge.server.store import Store

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
        require_insecure_allowed(cfg.address, cfg.insecure)
        self.cfg = cfg
        self.state_dir = Path(cfg.state_dir).resolve()
        self.store = Store(self.state_dir / "fedge.db")
        interrupted = self.store.mark_interrupted()
        if interrupted:
            log.warning("runs interrupted by the previous server exit: %s", ", ".join(map(str, interrupted)))
        self.router = Router()
        self.runs = RunManager(self.store, self.router, self.state_dir, cfg.node_wait_timeout, verbosity)
        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=512, thread_name_prefix="fedge-grpc"),
            options=[
                ("grpc.max_send_message_length", cfg.max_frame_bytes),
                ("grpc.max_receive_message_length", cfg.max_frame_bytes),
                *GRPC_OPTIONS,
            ],
        )
        self.audit = AuditLog(self.state_dir / "audit.jsonl")
        self.limits = FrameLimits(cfg.max_frame_bytes, cfg.max_message_bytes, cfg.max_inflight_bytes)
        fleet = FleetService(
            self.store, self.router, cfg.heartbeat_interval, cfg.node_timeout, self.limits, self.audit
        )
        fleet_pb2_grpc.add_FleetServicer_to_server(fleet, self._grpc)
        control_pb2_grpc.add_ControlServicer_to_server(
            ControlService(self.store, self.router, self.runs), self._grpc
        )
        self.address = ""
        self._stopped = threading.Event()

    def start(self) -> str:
        """Bind and start serving; returns the bound ``host:port``."""
        host, port = split_address(self.cfg.address)
        try:
            bound = self._grpc.add_insecure_port(self.cfg.address)
        except RuntimeError:
            bound = 0
        if bound == 0:
            raise FedgeError(
                f"cannot listen on {self.cfg.address}: the port is in use or the address is not local",
                "pick another port with --address, or stop the process using it",
            )
        self.address = f"{host}:{bound}"
        self._grpc.start()
        write_text(self.state_dir / "address", self.address + "\n")
        return self.address

    def wait(self) -> None:
        self._stopped.wait()

    def stop(self, grace: float = 2.0) -> None:
        """Stop accepting, end device streams, stop run workers."""
        for session in self.router.sessions():
            session.close()
        self.runs.shutdown()
        self._grpc.stop(grace).wait()
        self.store.close()
        self._stopped.set()
