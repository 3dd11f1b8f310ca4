"""``fedge simulate``: a whole federation on one machine, on the production path or on Ray."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from fedge import logs
from fedge.errors import FedgeError
from fedge.server.run_cli import (
    CLIP_OPT,
    DEFAULT_APP,
    DP_DELTA_OPT,
    DP_NOISE_OPT,
    QUANT_BITS_OPT,
    SECAGG_K_OPT,
    SECAGG_OPT,
    SECAGG_T_OPT,
    build_run_config,
    follow,
    privacy_sets,
)

DEFAULT_CLIENT_APP = "fedge.client.app:app"


def simulate(
    clients: Annotated[int, typer.Option(help="number of edge daemons")] = 3,
    rounds: Annotated[int, typer.Option(help="federated rounds")] = 3,
    task: Annotated[str, typer.Option(help="digits, mnist5k or package.module:attr")] = "digits",
    partition: Annotated[str, typer.Option(help="iid, dirichlet:<alpha> or shards:<n>")] = "iid",
    strategy: Annotated[str, typer.Option(help="Flower strategy name")] = "fedavg",
    min_clients: Annotated[int | None, typer.Option(help="clients required per round (default: all)")] = None,
    seed: Annotated[int, typer.Option(help="seed for the split, the model and training")] = 0,
    set_: Annotated[list[str] | None, typer.Option("--set", help="run config key=value (repeatable)")] = None,
    engine: Annotated[
        str, typer.Option(help="fedge (real processes) or ray (Flower's Ray engine)")
    ] = "fedge",
    server_app: Annotated[str, typer.Option(help="Flower ServerApp package.module:attr")] = DEFAULT_APP,
    client_app: Annotated[
        str, typer.Option(help="Flower ClientApp package.module:attr")
    ] = DEFAULT_CLIENT_APP,
    app_dir: Annotated[str, typer.Option(help="directory holding the apps' package")] = ".",
    workdir: Annotated[str | None, typer.Option(help="where logs, data and run dirs go")] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="plaintext on loopback instead of a temporary mTLS PKI")
    ] = False,
    secagg: SECAGG_OPT = False,
    secagg_k: SECAGG_K_OPT = 0,
    secagg_t: SECAGG_T_OPT = 0,
    clip: CLIP_OPT = 0.0,
    quant_bits: QUANT_BITS_OPT = 22,
    dp_noise: DP_NOISE_OPT = 0.0,
    dp_delta: DP_DELTA_OPT = 1e-5,
    verbose: Annotated[int, typer.Option("-v", "--verbose", count=True)] = 0,
) -> None:
    """Simulate a federation: a real server and real daemons on 127.0.0.1 (or Flower's Ray engine)."""
    logs.setup(verbose)
    signal.signal(signal.SIGTERM, _interrupt)  # same teardown as Ctrl-C: no orphan processes
    if clients < 1:
        raise FedgeError("--clients must be at least 1", "pass e.g. --clients 3")
    sets = [
        *privacy_sets(secagg, secagg_k, secagg_t, clip, quant_bits, dp_noise, dp_delta),
        *(set_ or []),
        f"partition={partition}",
        f"seed={seed}",
    ]
    config = build_run_config(task, rounds, strategy, min_clients or clients, sets, server_app)
    work = Path(workdir or Path("fedge-sim") / time.strftime("%Y%m%d-%H%M%S")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    console = Console(stderr=True)
    console.print(
        f"simulating {clients} clients × {rounds} rounds of {task} ({partition}) on {engine}; workdir {work}"
    )
    if engine == "ray":
        if config.get("secagg"):
            raise FedgeError(
                "--secagg runs on fedge's engine only: its clients keep round secrets in memory, "
                "which Ray's workers do not share between stages",
                "drop --engine ray (the default engine runs real daemons)",
            )
        _simulate_ray(config, clients, server_app, client_app, app_dir, work, console)
    elif engine == "fedge":
        _simulate_local(config, clients, server_app, client_app, app_dir, work, verbose, console, insecure)
    else:
        raise FedgeError(f"unknown engine '{engine}'", "use --engine fedge or --engine ray")


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _simulate_local(
    config: dict[str, Any],
    clients: int,
    server_app: str,
    client_app: str,
    app_dir: str,
    work: Path,
    verbose: int,
    console: Console,
    insecure: bool,
) -> None:
    from fedge.sim.local import LocalFederation

    data_files = _write_partitions(config, clients, work) if client_app == DEFAULT_CLIENT_APP else {}
    with LocalFederation(work, verbose, secure=not insecure) as fed:
        fed.start_server()
        for i in range(clients):
            name = f"edge-{i}"
            args = [
                "--client-app",
                client_app,
                "--app-dir",
                app_dir,
                "--node-config",
                f"partition-id={i}",
                "--node-config",
                f"num-partitions={clients}",
            ]
            if name in data_files:
                args += ["--data", str(data_files[name])]
            fed.start_daemon(name, args)
        fed.wait_for_nodes(clients)
        client = fed.control()
        status = client.start_run(server_app, config, str(Path(app_dir).resolve()))
        follow(client, status.run_id, int(config["num-server-rounds"]), console)
        client.close()


def _write_partitions(config: dict[str, Any], clients: int, work: Path) -> dict[str, Path]:
    """Each daemon gets its own private data file, as a real device would have."""
    from fedge.client.data import write_partitions
    from fedge.tasks import load_task

    names = [f"edge-{i}" for i in range(clients)]
    paths = write_partitions(
        load_task(str(config["task"])),
        clients,
        str(config["partition"]),
        int(config["seed"]),
        [work / n for n in names],
    )
    return dict(zip(names, paths, strict=True))


def _simulate_ray(
    config: dict[str, Any],
    clients: int,
    server_app: str,
    client_app: str,
    app_dir: str,
    work: Path,
    console: Console,
) -> None:
    from fedge.sim.ray_engine import run_on_ray

    config = {**config, "run-dir": str(work / "run")}
    rounds = run_on_ray(
        config, clients, server_app_ref=server_app, client_app_ref=client_app, app_dir=app_dir
    )
    for row in rounds:
        acc = row.get("central-accuracy", row.get("eval-acc"))
        console.print(f"round {row.get('round', '?'):>3}: accuracy={acc}", soft_wrap=True)
    console.print(f"run directory: {work / 'run'}")
