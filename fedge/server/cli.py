"""``fedge server start`` and ``fedge nodes list``; the ``fedge run`` group lives in run_cli."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fedge import logs
from fedge.config import ServerConfig, load
from fedge.protos.v1 import fleet_pb2
from fedge.server.control_client import ControlClient
from fedge.server.run_cli import ADMIN_OPT, INSECURE_OPT, SERVER_OPT, run_app

server_app = typer.Typer(no_args_is_help=True)
nodes_app = typer.Typer(no_args_is_help=True)
__all__ = ["nodes_app", "run_app", "server_app"]


@server_app.command("start")
def start(
    config: Annotated[str | None, typer.Option(help="server.toml ([server] table)")] = None,
    address: Annotated[
        str | None, typer.Option(help="HOST:PORT to listen on (port 0 = any free port)")
    ] = None,
    state_dir: Annotated[str | None, typer.Option(help="where fedge.db and run directories live")] = None,
    insecure: Annotated[
        bool | None, typer.Option("--insecure", help="plaintext gRPC (loopback only)")
    ] = None,
    node_wait_timeout: Annotated[
        float | None, typer.Option(help="seconds a run waits for enough nodes")
    ] = None,
    pki_dir: Annotated[str | None, typer.Option(help="fedge PKI dir (`fedge pki init`): mTLS")] = None,
    enroll_address: Annotated[
        str | None, typer.Option(help="HOST:PORT of the TLS enrollment listener for `fedge client enroll`")
    ] = None,
    metrics_address: Annotated[
        str | None,
        typer.Option(help="HOST:PORT for Prometheus /metrics (off by default; port 0 = any free port)"),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(
            help="central evaluation: auto (CUDA, MPS, CPU), cpu, cuda[:i] or mps; aggregation stays on CPU"
        ),
    ] = None,
    verbose: logs.VERBOSE_OPT = 0,
) -> None:
    """Start the aggregation server (Fleet for devices, Control for the CLI)."""
    from fedge.server.service import FedgeServer

    logs.setup(verbose)
    cfg = load(
        ServerConfig,
        config,
        "server",
        {
            "address": address,
            "state_dir": state_dir,
            "insecure": insecure,
            "node_wait_timeout": node_wait_timeout,
            "pki_dir": pki_dir,
            "enroll_address": enroll_address,
            "metrics_address": metrics_address,
            "device": device,
        },
    )
    server = FedgeServer(cfg, verbosity=verbose)
    bound = server.start()
    mode = "mTLS" if server.pki_dir else "plaintext"
    print(
        f"fedge server listening on {bound} ({mode}; state: {server.state_dir}; "
        f"central evaluation on {server.device})",
        file=sys.stderr,
        flush=True,
    )
    if server.enroll_address:
        print(f"enrollment on {server.enroll_address}", file=sys.stderr, flush=True)
    if server.metrics_address:
        print(f"metrics on http://{server.metrics_address}/metrics", file=sys.stderr, flush=True)

    def _stop(signum: int, _frame: object) -> None:
        server.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    server.wait()
    # Stopped in order: streams ended, run workers and exporter stopped, stores closed. Exit now
    # rather than at the interpreter's exit, which joins every pool thread: grpc.aio runs
    # synchronous streaming handlers (Control's StreamEvents) through bridge threads, and one
    # whose client walked away mid-stream can wait forever on the stopped event loop.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@nodes_app.command("list")
def nodes_list(
    server: SERVER_OPT = "127.0.0.1:9092", insecure: INSECURE_OPT = False, admin_dir: ADMIN_OPT = None
) -> None:
    """List every device the server has seen, online first."""
    from fedge.server.run_cli import client_for

    client: ControlClient = client_for(server, insecure, admin_dir)
    nodes = sorted(client.list_nodes(), key=lambda n: (not n.online, n.name))
    table = Table(
        "name", "node id", "online", "last seen", "accelerator", "cores", "memory", "disk free", "tags",
        "signals", "peer",
    )  # fmt: skip
    for n in nodes:
        ago = f"{time.time() - n.last_seen:.0f} s ago" if not n.online else "now"
        table.add_row(
            n.name, str(n.node_id), "yes" if n.online else "no", ago, n.accelerator or "-",
            *_properties(n.properties if n.online else None), n.peer,
        )  # fmt: skip
    # Not a terminal (a pipe, a script, a log): rows whole rather than squeezed into 80 columns.
    console = Console() if sys.stdout.isatty() else Console(width=200)
    console.print(table)


def _properties(props: fleet_pb2.DeviceProperties | None) -> tuple[str, ...]:
    """cores, memory, disk free, tags and signals of a node's last report ("-" when offline)."""
    if props is None:
        return ("-",) * 5
    gib = 1024**3
    signals = " ".join(f"{k}={v}" for k, v in sorted(props.signals.items())) or "-"
    return (
        str(props.cores or "-"),
        f"{props.memory_bytes / gib:.1f} GiB" if props.memory_bytes else "-",
        f"{props.free_disk_bytes / gib:.1f} GiB" if props.free_disk_bytes else "-",
        ",".join(props.tags) or "-",
        signals,
    )
