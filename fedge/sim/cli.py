"""``fedge simulate``: a whole federation on one machine, on the production path or on Ray."""

from __future__ import annotations

import json
import signal
import time
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from fedge import logs
from fedge.config import parse_assignments
from fedge.errors import FedgeError
from fedge.server.fleet_flags import COMPRESS_OPT, SECRET_SAMPLING_OPT, fleet_sets
from fedge.server.run_cli import (
    BUFFER_OPT,
    CLIP_OPT,
    DEFAULT_APP,
    DP_DELTA_OPT,
    DP_NOISE_OPT,
    MAX_STALENESS_OPT,
    MODE_OPT,
    QUANT_BITS_OPT,
    SECAGG_K_OPT,
    SECAGG_OPT,
    SECAGG_T_OPT,
    async_sets,
    brief,
    build_run_config,
    follow,
    privacy_sets,
)

if TYPE_CHECKING:
    from fedge.sim.netem import ImpairedLink, NetemSpec

DEFAULT_CLIENT_APP = "fedge.client.app:app"


def simulate(
    clients: Annotated[int, typer.Option(help="number of edge daemons")] = 3,
    rounds: Annotated[
        int | None, typer.Option(help="federated rounds (default: 3, or the app's num-server-rounds)")
    ] = None,
    task: Annotated[str, typer.Option(help="digits, mnist5k, charlm or package.module:attr")] = "digits",
    partition: Annotated[str, typer.Option(help="iid, dirichlet:<alpha> or shards:<n>")] = "iid",
    strategy: Annotated[str, typer.Option(help="Flower strategy name")] = "fedavg",
    min_clients: Annotated[int | None, typer.Option(help="clients required per round (default: all)")] = None,
    seed: Annotated[int, typer.Option(help="seed for the split, the model and training")] = 0,
    set_: Annotated[list[str] | None, typer.Option("--set", help="run config key=value (repeatable)")] = None,
    node_config: Annotated[
        list[str] | None,
        typer.Option(
            "--node-config",
            help="every daemon's node config key=value (repeatable; partition-id and "
            "num-partitions are set per daemon, as in Flower's simulation)",
        ),
    ] = None,
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
    secagg_k: SECAGG_K_OPT = None,
    secagg_t: SECAGG_T_OPT = None,
    clip: CLIP_OPT = None,
    quant_bits: QUANT_BITS_OPT = None,
    dp_noise: DP_NOISE_OPT = None,
    dp_delta: DP_DELTA_OPT = None,
    secret_sampling: SECRET_SAMPLING_OPT = False,
    compress: COMPRESS_OPT = None,
    mode: MODE_OPT = None,
    buffer: BUFFER_OPT = None,
    max_staleness: MAX_STALENESS_OPT = None,
    hold: Annotated[
        bool, typer.Option("--hold", help="after the run, keep the daemons serving its model until Ctrl-C")
    ] = False,
    netem: Annotated[
        str | None,
        typer.Option(
            "--netem",
            help='impair each daemon\'s link (root): "delay=100ms jitter=20ms loss=2% rate=1mbit"',
        ),
    ] = None,
    from_compose: Annotated[
        str | None,
        typer.Option("--from-compose", help="run a compose file's services' own commands as processes"),
    ] = None,
    gpus_per_client: Annotated[
        float, typer.Option(help="--engine ray: GPUs per virtual client, fractions allowed (e.g. 0.25)")
    ] = 0.0,
    verbose: logs.VERBOSE_OPT = 0,
) -> None:
    """Simulate a federation: a real server and real daemons on 127.0.0.1 (or Flower's Ray engine)."""
    logs.setup(verbose)
    signal.signal(signal.SIGTERM, _interrupt)  # same teardown as Ctrl-C: no orphan processes
    config = _checked_config(locals())  # everything is validated before the banner and any directory
    netem_spec = _netem_spec(netem, engine, insecure, hold, from_compose)
    rounds = int(config.get("num-server-rounds", 0) or 0)
    work = Path(workdir or Path("fedge-sim") / time.strftime("%Y%m%d-%H%M%S")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    console = Console(stderr=True)
    console.print(
        f"simulating {clients} clients × {rounds} rounds of {task} ({partition}) on {engine}; workdir {work}",
        soft_wrap=True,  # a path split over two lines cannot be copied (non-TTY output wraps at 80)
    )
    if from_compose:
        _simulate_compose(from_compose, clients, rounds, task, partition, strategy, engine, work, console)
        return
    if engine == "ray":
        _simulate_ray(config, clients, server_app, client_app, app_dir, work, console, gpus_per_client)
    else:
        _simulate_local(
            config,
            clients,
            server_app,
            client_app,
            app_dir,
            work,
            verbose,
            console,
            insecure,
            hold,
            netem_spec,
            node_config or [],
        )


def _checked_config(args: dict[str, Any]) -> dict[str, Any]:
    """The run config of ``simulate``'s arguments, after every check that needs nothing started."""
    clients, engine = int(args["clients"]), str(args["engine"])
    if clients < 1:
        raise FedgeError("--clients must be at least 1", "pass e.g. --clients 3")
    if engine not in ("fedge", "ray"):
        raise FedgeError(f"unknown engine '{engine}'", "use --engine fedge or --engine ray")
    node_config = args["node_config"]
    parse_assignments(node_config, "--node-config")  # malformed items fail before anything starts
    if node_config and engine != "fedge":
        raise FedgeError("--node-config needs --engine fedge", "Flower's Ray engine sets partition-id only")
    # fedge's apps read the split from the run config; another app keeps its own keys.
    server_app = str(args["server_app"])
    own = server_app == DEFAULT_APP or args["client_app"] == DEFAULT_CLIENT_APP
    sets = [
        *privacy_sets(
            args["secagg"],
            args["secagg_k"],
            args["secagg_t"],
            args["clip"],
            args["quant_bits"],
            args["dp_noise"],
            args["dp_delta"],
        ),
        *fleet_sets(secret_sampling=args["secret_sampling"], compress=args["compress"]),
        *async_sets(args["mode"], args["buffer"], args["max_staleness"]),
        *([f"partition={args['partition']}", f"seed={args['seed']}"] if own else []),
        *(args["set_"] or []),
    ]
    config = build_run_config(
        args["task"] if own else None,
        args["rounds"],
        args["strategy"] if own else None,
        args["min_clients"] or clients,
        sets,
        server_app,
        args["app_dir"],
    )
    if engine == "ray":
        from fedge.sim.ray_engine import check_gpus_per_client

        check_gpus_per_client(float(args["gpus_per_client"]))
        if config.get("secagg"):
            raise FedgeError(
                "--secagg runs on fedge's engine only: its clients keep round secrets in memory, "
                "which Ray's workers do not share between stages",
                "drop --engine ray (the default engine runs real daemons)",
            )
        if args["hold"]:
            raise FedgeError("--hold needs --engine fedge (Ray runs no daemons)", "drop --hold")
        if config.get("compress"):
            raise FedgeError(
                "--compress needs --engine fedge: the daemons encode and fedge's transport decodes",
                "drop --engine ray (the default engine runs real daemons)",
            )
        if config.get("mode") == "async":
            raise FedgeError(
                "--mode async runs on fedge's engine only: it pushes work to one device at a time "
                "and pulls each reply as it arrives, which Flower's simulation grid cannot do",
                "drop --engine ray (the default engine runs real daemons)",
            )
    elif args["gpus_per_client"]:
        raise FedgeError(
            "--gpus-per-client is for --engine ray",
            "fedge's daemons pick their device themselves (`fedge client start --device`); drop it",
        )
    if server_app == DEFAULT_APP:  # a task that cannot be imported fails now, not in every process
        from fedge.tasks import load_task

        load_task(str(config["task"]), str(args["app_dir"]))
    return config


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
    hold: bool = False,
    netem: NetemSpec | None = None,
    node_config: list[str] | None = None,
) -> None:
    from fedge.sim.local import LocalFederation
    from fedge.sim.serving import check_serving

    data_files = _write_partitions(config, clients, work, app_dir) if client_app == DEFAULT_CLIENT_APP else {}
    with ExitStack() as stack, LocalFederation(work, verbose, secure=not insecure) as fed:
        fed.start_server()
        links = _impaired_links(stack, netem, clients, fed.address, work) if netem else []
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
                *(arg for item in node_config or [] for arg in ("--node-config", item)),
            ]
            if name in data_files:
                args += ["--data", str(data_files[name])]
            if links:  # dial the server through this daemon's impaired link (cert is for localhost)
                args += ["--server-name", "localhost"]
                fed.start_daemon(name, args, server=links[i].address, wrap=links[i].wrap)
                continue
            fed.start_daemon(name, args)
        fed.wait_for_nodes(clients)
        client = fed.control()
        status = client.start_run(server_app, config, str(Path(app_dir).resolve()))
        follow(client, status.run_id, int(config.get("num-server-rounds", 0) or 0), console, verbose)
        states = {f"edge-{i}": work / f"edge-{i}" for i in range(clients)}
        if links:  # each daemon's inference port is on the loopback of its own network namespace
            console.print("--netem: not checking the daemons' inference ports (inside their namespaces)")
        else:
            check_serving(client, status.run_id, states, console, hold)  # every daemon serves the final model
        client.close()


def _write_partitions(config: dict[str, Any], clients: int, work: Path, app_dir: str) -> dict[str, Path]:
    """Each daemon gets its own private data file, as a real device would have."""
    from fedge.client.data import write_partitions
    from fedge.tasks import load_task

    names = [f"edge-{i}" for i in range(clients)]
    paths = write_partitions(
        load_task(str(config["task"]), app_dir),
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
    gpus_per_client: float = 0.0,
) -> None:
    from fedge.sim.ray_engine import run_on_ray

    config = {**config, "run-dir": str(work / "run")}
    rounds = run_on_ray(
        config,
        clients,
        server_app_ref=server_app,
        client_app_ref=client_app,
        app_dir=app_dir,
        gpus_per_client=gpus_per_client,
    )
    for row in rounds:
        console.print(f"round {row.get('round', '?'):>3}: {brief(row)}", soft_wrap=True)
    console.print(f"run directory: {work / 'run'}")


def _netem_spec(
    netem: str | None, engine: str, insecure: bool, hold: bool, from_compose: str | None
) -> NetemSpec | None:
    """Parse and check ``--netem`` before anything starts (root is checked when the links are made)."""
    if netem is None:
        return None
    from fedge.sim.netem import NetemSpec

    if engine != "fedge" or from_compose:
        raise FedgeError(
            "--netem impairs real daemons: it needs --engine fedge and no --from-compose",
            "in compose, use its netem profile (real tc netem); or drop --netem",
        )
    if insecure:
        raise FedgeError(
            "--netem puts daemons on their own network, where plaintext is refused", "drop --insecure"
        )
    if hold:
        raise FedgeError("--hold with --netem: daemons serve inference inside their namespaces", "drop one")
    return NetemSpec.parse(netem)


def _impaired_links(
    stack: ExitStack, spec: NetemSpec, clients: int, server: str, work: Path
) -> list[ImpairedLink]:
    """One impaired link per daemon; closed (and its counters written to netem.json) on exit."""
    from fedge import atomic
    from fedge.sim.netem import ImpairedNetwork

    net = stack.enter_context(ImpairedNetwork(spec, clients, server))
    stack.callback(
        lambda: atomic.write_text(work / "netem.json", json.dumps({"netem": str(spec), "links": net.stats()}))
    )
    return net.links


def _simulate_compose(
    path: str,
    clients: int,
    rounds: int,
    task: str,
    partition: str,
    strategy: str,
    engine: str,
    work: Path,
    console: Console,
) -> None:
    """The compose file's own commands as processes; the knobs reach it as its ${FEDGE_*} variables."""
    from fedge.sim.compose_run import simulate_compose

    if engine != "fedge":
        raise FedgeError("--from-compose runs the compose services, not Ray", "drop --engine")
    variables = {
        "FEDGE_EDGES": str(clients),
        "FEDGE_ROUNDS": str(rounds),
        "FEDGE_TASK": task,
        "FEDGE_PARTITION": partition,
        "FEDGE_STRATEGY": strategy,
    }
    simulate_compose(path, variables, {"edge": clients}, work, console)
