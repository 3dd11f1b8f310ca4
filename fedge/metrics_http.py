"""Serve one Prometheus ``CollectorRegistry`` at ``http://HOST:PORT/metrics``.

Shared by the server (:mod:`fedge.server.metrics`) and the edge daemon
(:mod:`fedge.client.metrics`), which must not import each other. Why a registry per instance
instead of prometheus_client's global one: tests (and ``fedge simulate``) run several servers or
daemons in one process, and each must expose only its own counters.

Port 0 binds any free port; the bound ``host:port`` is written to ``<state_dir>/metrics_address``
so tools never race for a port (as ``<state_dir>/address`` does for gRPC).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

from fedge.atomic import write_text
from fedge.config import is_loopback, split_address
from fedge.errors import FedgeError

log = logging.getLogger("fedge.metrics")

ADDRESS_FILE = "metrics_address"


class MetricsEndpoint:
    """A running ``/metrics`` HTTP listener; :meth:`close` stops it and frees the port."""

    def __init__(self, httpd: WSGIServer, thread: threading.Thread, address: str) -> None:
        self._httpd, self._thread = httpd, thread
        self.address = address

    @property
    def url(self) -> str:
        host, _, port = self.address.rpartition(":")
        return f"http://{host}:{port}/metrics"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def serve(registry: CollectorRegistry, address: str, state_dir: str | Path) -> MetricsEndpoint:
    """Listen on ``address`` (``HOST:PORT``); write the bound address to ``<state_dir>/metrics_address``.

    Plain HTTP, like every Prometheus exporter by default: the series hold counts and sizes, never
    training data, names of devices or keys. On a non-loopback address, restrict who can reach the
    port (firewall, or a TLS-terminating proxy) — logged as a reminder.
    """
    host, port = split_address(address)
    try:
        httpd, thread = start_http_server(port, host, registry)
    except OSError as exc:
        raise FedgeError(
            f"cannot serve metrics on {address}: {exc.strerror or exc}",
            "pick another port with --metrics-address (port 0 = any free port), or stop the process using it",
        ) from None
    thread.name = "fedge-metrics"
    bound = f"[{host}]:{httpd.server_port}" if ":" in host else f"{host}:{httpd.server_port}"
    write_text(Path(state_dir) / ADDRESS_FILE, bound + "\n")
    if not is_loopback(host):
        log.warning("metrics served on %s without TLS: restrict access to the Prometheus scraper", bound)
    return MetricsEndpoint(httpd, thread, bound)


class Exposed:
    """Base of a metrics set with its own registry: :meth:`serve` and :meth:`close` its endpoint."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._endpoint: MetricsEndpoint | None = None

    def serve(self, address: str, state_dir: str | Path) -> str:
        """Start ``/metrics`` on ``address`` (port 0 = any); returns the bound ``host:port``."""
        self._endpoint = serve(self.registry, address, state_dir)
        return self._endpoint.address

    def close(self) -> None:
        if self._endpoint is not None:
            self._endpoint.close()
            self._endpoint = None
