"""``fedge relay start``: a relay between the server (or another relay) and a group of devices.

Enrolled like a device (``fedge client enroll``) with a token the operator made with ``fedge pki
token create --relay``; its devices connect to ``--listen`` as they would to a server, with
``--server-name <relay name>``. Everything wrong is refused before the first connection.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedge import config, logs
from fedge.errors import FedgeError

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Relay between the server and devices.")

_Str = str | None


@app.command("start")
def start(
    server: Annotated[str, typer.Option("--server", help="Parent address HOST:PORT (server or relay).")],
    listen: Annotated[str, typer.Option("--listen", help="Address devices connect to (port 0: any).")],
    state_dir: Annotated[str, typer.Option("--state-dir", help="The relay's enrolled state directory.")],
    server_name: Annotated[
        _Str, typer.Option("--server-name", help="Name in the parent's certificate, if not the host.")
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Plaintext gRPC (loopback test federations only).")
    ] = False,
    sample_fraction: Annotated[
        float, typer.Option("--sample-fraction", help="Share of its devices asked per instruction.")
    ] = 1.0,
    min_devices: Annotated[
        int, typer.Option("--min-devices", help="Wait (bounded) for at least this many devices.")
    ] = 1,
    max_wait: Annotated[
        float,
        typer.Option("--max-wait", help="Give up after this many seconds without the parent (0: never)."),
    ] = 0.0,
    verbose: logs.VERBOSE_OPT = 0,
) -> None:
    """Serve devices on --listen and answer the parent with one partial aggregate per instruction."""
    logs.setup(verbose)
    config.split_address(server)
    config.split_address(listen)
    if max_wait < 0:
        raise FedgeError(f"--max-wait must be ≥ 0, got {max_wait:g}", "use 0 to wait forever")
    from fedge.client.daemon import install_signal_handlers
    from fedge.relay.app import Sampling
    from fedge.relay.relay import Relay

    root = Path(state_dir)
    parent = config.EdgeConfig(
        server=server, state_dir=str(root), insecure=insecure, server_name=server_name or "", name="relay"
    )
    children = config.ServerConfig(address=listen, state_dir=str(root / "children"), insecure=insecure)
    relay = Relay(parent, children, Sampling(sample_fraction, min_devices), max_wait)
    restore = install_signal_handlers(relay.daemon)
    try:
        relay.run_forever()
    finally:
        restore()
