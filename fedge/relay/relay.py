"""A relay process: the parent-side daemon and the device-side Fleet service, started and stopped as one."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc

from fedge.client.daemon import EdgeDaemon
from fedge.client.tls import check_certificate, is_enrolled
from fedge.client.wire import make_channel
from fedge.config import EdgeConfig, ServerConfig, require_insecure_allowed
from fedge.errors import FedgeError
from fedge.relay.app import RelayApp, Sampling
from fedge.relay.children import Children
from fedge.relay.keys import KeyProxy, RunKeys
from fedge.security import is_relay
from fedge.server.models import CAPABILITY as MODELS_CAPABILITY
from fedge.server.relay_role import RELAY_CAPABILITY

log = logging.getLogger("fedge.relay")


class Relay:
    """``fedge relay start``: a device to ``parent.server``, a server on ``children.address``.

    Parameters
    ----------
    parent : EdgeConfig
        Towards the parent: its address, the relay's enrolled state dir (mTLS identity with the
        relay role), ``--server-name``. Its ``client_app`` is ignored: the relay's is
        :class:`fedge.relay.app.RelayApp`.
    children : ServerConfig
        Towards the devices: listener, state dir, heartbeats and limits.
    sampling : Sampling
        Which devices each instruction goes to.
    max_wait : float
        As ``fedge client start --max-wait``: give up after this long without the parent (0: never).
    """

    def __init__(self, parent: EdgeConfig, children: ServerConfig, sampling: Sampling, max_wait: float = 0.0):
        state = Path(parent.state_dir)
        secure = not parent.insecure
        require_insecure_allowed(parent.server, parent.insecure, is_enrolled(state), "enroll the relay first")
        require_insecure_allowed(children.address, parent.insecure, secure, "enroll the relay first")
        if secure:
            parent.name = check_certificate(state)
            if not is_relay((state / "tls.pem").read_bytes()):
                raise FedgeError(
                    f"the certificate in {state} has no relay role",
                    "enroll the relay with a token made by `fedge pki token create --relay --name NAME`",
                )
        parent.inference_address = ""  # a relay serves no model to local apps

        def channel() -> grpc.Channel:
            return make_channel(parent)

        self.children = Children(children, state if secure else None)
        if secure:  # relays below this one get their per-run keys announced through this one
            self.children.serve_keys(KeyProxy(channel, self.children.audit))
        keys = RunKeys(channel, state) if secure else None
        self.app = RelayApp(self.children, keys, sampling)
        self.daemon = EdgeDaemon(parent, self.app, max_wait=max_wait)
        # Not "models-v1": a relay does not pass model bundles on (docs/relay.md, "Limits"), so
        # the server must not spend its bandwidth offering them to it.
        self.daemon.capabilities = [c for c in self.daemon.capabilities if c != MODELS_CAPABILITY]
        self.daemon.capabilities.append(RELAY_CAPABILITY)

    def run_forever(self) -> None:
        """Serve devices and the parent until :meth:`stop` (or the parent refuses the relay)."""
        address = self.children.start()
        log.info("relay %s: devices on %s, parent %s", self.daemon.name, address, self.daemon.cfg.server)
        try:
            self.daemon.run_forever()
        finally:
            self.children.stop()

    def stop(self) -> None:
        """Stop (safe from a signal handler): the daemon drains, then the listener closes."""
        self.daemon.stop()
