"""The edge daemon: one Fleet.Connect stream, heartbeats, reconnect forever, graceful stop.

Why a daemon of our own: stock Flower's SuperNode exits when its server restarts and polls over
HTTP. An edge device nobody is watching must instead come back by itself: the daemon reconnects
forever with jittered exponential backoff (full jitter, so a restarted server is not hit by every
device at the same instant) and treats a silent stream (no frame for 3 heartbeat intervals) as
dead, because a half-open TCP connection may never report an error.

Threads, and why:
- the *loop* thread reads the stream (so heartbeats are seen while a task runs) and reconnects;
  ``run_forever`` joins it, which keeps the caller's (main) thread free to take signals;
- one *app* thread (:mod:`._stream`) runs instructions one at a time (flwr's TaskIdentity is
  process-global) and outlives reconnects so the ClientApp stays warm;
- a *ticker* thread per stream sends heartbeats, runs the silence watchdog and the drain on stop.
"""

from __future__ import annotations

import importlib.metadata
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

import fedge
from fedge.chunks import FrameLimits, fresh_spool
from fedge.config import EdgeConfig, require_insecure_allowed
from fedge.eligibility import to_proto
from fedge.errors import FedgeError
from fedge.protos.v1 import fleet_pb2, fleet_pb2_grpc

from ._stream import DEFAULT_HEARTBEAT, AppThread, PendingInstruction, Stream
from .inference import InferenceServer, PredictLimits
from .models import ModelStore, ModelSync, Stored
from .properties import PropertyReader, decline_reason
from .runtime import ClientAppLike, ClientRuntime
from .tls import is_enrolled
from .wire import Backoff, make_channel

if TYPE_CHECKING:
    from .metrics import EdgeMetrics

__all__ = ["Backoff", "EdgeDaemon", "install_signal_handlers", "make_channel"]

log = logging.getLogger("fedge.client.daemon")

CAPABILITIES = ["chunks-v1", "models-v1"]
SILENCE_FACTOR = 3.0  # no frame for this many intervals = dead connection
HANDSHAKE_TIMEOUT = 10.0  # connected but no Welcome
CLOSE_TIMEOUT = 5.0  # after our half-close, how long the server gets to end the stream
WARN_EVERY = 30.0  # rate limit of "server unreachable" warnings
SIGNAL_LATENCY = 0.1  # longest a SIGTERM/SIGINT may wait before its handler runs


def status(line: str) -> None:
    """A connection change, on the console whatever the verbosity: an operator watching a device
    (or its journal) must see when it is connected, to what, and when it lost the server."""
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}", file=sys.stderr, flush=True)


def fedge_version() -> str:
    """fedge's version for Hello; falls back to the installed metadata.

    Why: with a stale editable install (made before ``fedge/__init__.py`` existed) ``fedge`` is
    imported as a namespace package without ``__version__`` — that must not stop a device.
    """
    version = getattr(fedge, "__version__", None)
    if isinstance(version, str):
        return version
    try:
        return importlib.metadata.version("fedge")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class EdgeDaemon:
    """The edge client: keeps a Fleet stream to the server and serves instructions in-process.

    Parameters
    ----------
    cfg : EdgeConfig
        Server address, name (empty: hostname), state dir, node config, backoff.
    client_app : ClientAppLike
        A loaded Flower ClientApp (see :func:`fedge.client.runtime.load_client_app`).
    max_wait : float
        Give up (``FedgeError`` from :meth:`run_forever`) after this many seconds without a
        connection; 0 waits forever.
    grace : float
        On :meth:`stop`, how long a running task may take to finish and have its reply sent.
    handshake_timeout : float
        How long a new stream may wait for the server's Welcome.
    channel_factory : Callable[[EdgeConfig], grpc.Channel]
        Builds the channel for each attempt (default :func:`make_channel`).
    """

    def __init__(
        self,
        cfg: EdgeConfig,
        client_app: ClientAppLike,
        *,
        max_wait: float = 0.0,
        grace: float = 30.0,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        channel_factory: Callable[[EdgeConfig], grpc.Channel] = make_channel,
    ) -> None:
        require_insecure_allowed(
            cfg.server,
            cfg.insecure,
            is_enrolled(cfg.state_dir),
            "enroll this device with `fedge client enroll`",
        )
        self.cfg = cfg
        self.name = cfg.name or socket.gethostname()
        self.capabilities = list(CAPABILITIES)  # what Hello announces (a relay adds its role)
        self.runtime = ClientRuntime(client_app, cfg.node_config, cfg.state_dir)
        # Reported at Hello and with every heartbeat; checked again before each train task.
        self.properties = PropertyReader(cfg)
        self.runtime.decline = lambda kind, run_config: decline_reason(self.properties, kind, run_config)
        self.max_wait, self.grace, self.handshake_timeout = max_wait, grace, handshake_timeout
        self._channel_factory = channel_factory
        self._stopping = threading.Event()
        self._state = threading.Condition()
        self._connections = 0
        self._connected = False
        self._node_id: int | None = None
        self._session: Stream | None = None
        self._app_thread = AppThread(self.runtime, self._stopping, self._poke)
        # Instructions are reassembled on disk and decoded from there: one copy of the model.
        self._limits = FrameLimits(
            max_message_bytes=cfg.max_message_bytes, max_inflight_bytes=cfg.max_message_bytes
        )
        self._spool = fresh_spool(Path(cfg.state_dir) / "spool")
        # Model bundles (fedge.client.models) and the EdgeInference service serving the active one.
        self.models = ModelStore(cfg.state_dir, allow_unsigned=cfg.insecure)
        self._sync = ModelSync(self.models, self._model_installed)
        self.inference: InferenceServer | None = None
        if cfg.inference_address:
            tls_dir = cfg.inference_tls_dir or None
            self.inference = InferenceServer(
                self.models,
                cfg.inference_address,
                cfg.threads,
                tls_dir,
                limits=PredictLimits(cfg.max_predict_rows, cfg.max_predict_bytes),
            )
        self._backoff = Backoff(cfg.backoff_initial, cfg.backoff_max)
        self.metrics: EdgeMetrics | None = None  # Prometheus /metrics, opt-in (--metrics-address)
        if cfg.metrics_address:
            from .metrics import EdgeMetrics

            self.metrics = EdgeMetrics(lambda: self._connected, self.models)
            self.runtime.observe = self.metrics.task

    # -- public surface ---------------------------------------------------------------------

    @property
    def node_id(self) -> int | None:
        """The node id from the last Welcome (None before the first connection)."""
        return self._node_id

    @property
    def connected(self) -> bool:
        """True while a welcomed stream is open."""
        return self._connected

    @property
    def connections(self) -> int:
        """How many streams have been welcomed so far (grows by one per reconnect)."""
        return self._connections

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stopping.is_set()

    @property
    def tasks_done(self) -> int:
        """Instructions answered (with content or an error reply) since start."""
        return self._app_thread.done

    def wait_connected(self, timeout: float | None = None, count: int = 1) -> bool:
        """Block until connected with at least ``count`` welcomes so far; False on timeout."""
        with self._state:
            return self._state.wait_for(lambda: self._connected and self._connections >= count, timeout)

    def stop(self) -> None:
        """Ask the daemon to finish: no new instructions, running task gets ``grace`` seconds.

        Safe from any thread and from a signal handler (it only sets events).
        """
        self._stopping.set()
        session = self._session
        if session is not None:
            session.wake.set()

    def run_forever(self) -> None:
        """Serve until :meth:`stop`; raises ``FedgeError`` if ``max_wait`` runs out. Call once.

        The work happens on a loop thread that this call joins, so the calling (main) thread
        stays able to run signal handlers. It joins in short slices: a process signal may be
        delivered to any thread (e.g. one of gRPC's), and CPython runs the Python handler only
        when the main thread executes bytecode — an untimed join could leave it pending forever.
        """
        failure: list[BaseException] = []

        def target() -> None:
            try:
                self._loop()
            except BaseException as exc:  # handed to the caller's thread
                failure.append(exc)

        thread = threading.Thread(target=target, name="fedge-edge-loop", daemon=True)
        thread.start()
        while thread.is_alive():
            thread.join(SIGNAL_LATENCY)
        if failure:
            raise failure[0]

    # -- loop -------------------------------------------------------------------------------

    def _poke(self) -> None:
        session = self._session
        if session is not None:
            session.wake.set()

    def _model_installed(self, stored: Stored, activated: bool) -> None:
        if activated and self.inference is not None:
            self.inference.refresh()

    def _loop(self) -> None:
        if self.metrics is not None:
            self.metrics.serve(self.cfg.metrics_address, self.cfg.state_dir)
        if self.inference is not None:
            self.inference.start()
        self._app_thread.start()
        last_ok = time.monotonic()
        warned_at: float | None = None
        try:
            while not self._stopping.is_set():
                welcomed, reason = self._session_once()
                now = time.monotonic()
                if self._stopping.is_set():
                    break
                if welcomed:
                    self._backoff.reset()
                    last_ok, warned_at = now, None
                elif warned_at is None or now - warned_at >= WARN_EVERY:
                    log.warning("server %s unreachable (%s); retrying", self.cfg.server, reason)
                    warned_at = now
                if self.max_wait > 0 and now - last_ok >= self.max_wait:
                    raise FedgeError(
                        f"could not connect to {self.cfg.server} for {self.max_wait:g}s",
                        "check that `fedge server start` is running there and reachable, or raise --max-wait",
                    )
                delay = self._backoff.next()
                if self.max_wait > 0:
                    delay = min(delay, last_ok + self.max_wait - now)
                self._stopping.wait(max(delay, 0.0))
        finally:
            self._app_thread.close()
            if self.inference is not None:
                self.inference.stop()
            if self.metrics is not None:
                self.metrics.close()

    def _session_once(self) -> tuple[bool, str]:
        """One stream from connect to end; returns (was welcomed, why it ended)."""
        session = Stream(
            self.metrics.sent_bytes.inc if self.metrics is not None else None, self._limits, self._spool
        )
        ticker = threading.Thread(target=self._tick, args=(session,), name="fedge-edge-ticker", daemon=True)
        channel = self._channel_factory(self.cfg)
        self._session = session
        if self._stopping.is_set():
            session.wake.set()
        reason = "server closed the stream"
        refused = ""
        try:
            hello = fleet_pb2.Hello(
                name=self.name,
                version=fedge_version(),
                capabilities=self.capabilities,
                accelerator=self.cfg.device,
                properties=to_proto(self.properties.current()),
            )
            session.send(fleet_pb2.EdgeFrame(hello=hello))
            session.call = fleet_pb2_grpc.FleetStub(channel).Connect(session.requests())
            ticker.start()
            for frame in session.call:
                self._on_frame(session, frame)
        except grpc.RpcError as err:
            code, details = getattr(err, "code", lambda: None)(), getattr(err, "details", lambda: "")()
            reason = session.reason or f"{code.name if code else 'error'}: {details}"
            if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
                refused = details or code.name
        except Exception:  # never let a bug end the daemon: drop the stream and reconnect
            log.exception("internal error on the stream; reconnecting")
            reason = "internal error"
        finally:
            session.cancel()
            session.closed.set()
            session.wake.set()
            self._sync.reset()
            if ticker.ident is not None:
                ticker.join()
            channel.close()
            with self._state:
                self._session = None
                self._connected = False
                self._state.notify_all()
        if refused:  # retrying cannot help a revoked or unknown certificate: stop, say why
            raise FedgeError(
                f"the server refused this device: {refused}",
                "re-enroll it with a new token (`fedge pki token create`), or check its certificate",
            )
        if session.welcomed.is_set() and not self._stopping.is_set():
            status(f"disconnected from {self.cfg.server} ({reason}); reconnecting")
        return session.welcomed.is_set(), reason

    def _on_frame(self, session: Stream, frame: fleet_pb2.ServerFrame) -> None:
        session.last_rx = time.monotonic()
        if self.metrics is not None:
            self.metrics.received_bytes.inc(frame.ByteSize())
        kind = frame.WhichOneof("kind")
        if kind == "welcome":
            if session.welcomed.is_set():
                return
            welcome = frame.welcome
            self.runtime.node_id = welcome.node_id
            interval = welcome.heartbeat_interval
            session.heartbeat_interval = interval if interval > 0 else DEFAULT_HEARTBEAT
            session.welcomed.set()
            session.wake.set()
            with self._state:
                self._node_id = welcome.node_id
                self._connections += 1
                self._connected = True
                self._state.notify_all()
            if self.metrics is not None:
                self.metrics.welcomed(self._connections)
            status(
                f"connected to {self.cfg.server} as {self.name}, node {welcome.node_id} "
                f"(server {welcome.server_version or '?'}; training on {self.cfg.device})"
            )
        elif kind == "instruction":
            if not session.welcomed.is_set():
                log.warning("instruction before Welcome ignored (protocol error)")
            elif self._stopping.is_set():
                log.debug("stopping: instruction %s not taken", frame.instruction.message_id)
            elif (instruction := session.reassembler.add(frame.instruction)) is not None:
                self._app_thread.submit(PendingInstruction(session, instruction))
        elif kind in ("model_offer", "model_part") and session.welcomed.is_set():
            if kind == "model_offer":
                session.send(*self._sync.on_offer(frame.model_offer))
            else:
                session.send(*self._sync.on_part(frame.model_part))
        # Server heartbeats only refresh last_rx.

    def _tick(self, session: Stream) -> None:
        """Heartbeats, the silence watchdog, the handshake timeout and the drain on stop."""
        next_beat = 0.0
        draining_since: float | None = None
        while not session.closed.is_set():
            now = time.monotonic()
            if self._stopping.is_set():
                if draining_since is None:
                    draining_since = now
                    if self._app_thread.busy:
                        log.info("stopping: letting the running task finish (grace %gs)", self.grace)
                if not self._app_thread.busy or now - draining_since >= self.grace:
                    if self._app_thread.busy:
                        log.warning("task still running after %gs; closing without its reply", self.grace)
                    session.half_close()
                    if not session.closed.wait(CLOSE_TIMEOUT):
                        session.cancel("the server did not end the stream after our half-close")
                    return
            if session.welcomed.is_set():
                interval = session.heartbeat_interval
                silent_until = session.last_rx + SILENCE_FACTOR * interval
                if now >= silent_until:
                    session.cancel(f"no frame from the server for {now - session.last_rx:.1f}s")
                    return
                if now >= next_beat:
                    props = to_proto(self.properties.current())
                    beat = fleet_pb2.Heartbeat(sent_at=time.time(), properties=props)
                    session.send(fleet_pb2.EdgeFrame(heartbeat=beat))
                    next_beat = now + interval
                timeout = min(next_beat, silent_until) - now
            else:
                deadline = session.started + self.handshake_timeout
                if now >= deadline:
                    session.cancel(f"no Welcome within {self.handshake_timeout:g}s")
                    return
                timeout = deadline - now
            if draining_since is not None:
                timeout = min(timeout, max(draining_since + self.grace - now, 0.0))
            session.wake.wait(max(timeout, 0.01))
            session.wake.clear()


def install_signal_handlers(daemon: EdgeDaemon) -> Callable[[], None]:
    """SIGTERM and SIGINT → :meth:`EdgeDaemon.stop`; returns a function restoring the old handlers.

    A second signal while stopping exits at once (code 130) instead of waiting out the grace
    period of a stuck task. Must be called from the main thread (a Python rule for signals).
    """
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def handler(signum: int, frame: object) -> None:
        if daemon.stopping:
            raise SystemExit(130)
        daemon.stop()

    for sig in previous:
        signal.signal(sig, handler)

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore
