"""``fedge run start|list|status|logs|stop|resume|plot``: launch, watch and continue federated runs."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedge import logs
from fedge.config import parse_assignments, require_insecure_allowed
from fedge.errors import FedgeError
from fedge.protos.v1 import control_pb2
from fedge.server.control_client import ControlClient
from fedge.server.events import RESUMABLE_STATES, EventKind
from fedge.server.fleet_flags import COMPRESS_OPT, REQUIRE_OPT, SECRET_SAMPLING_OPT, SELECT_OPT, fleet_sets

run_app = typer.Typer(no_args_is_help=True)
SERVER_OPT = Annotated[str, typer.Option("--server", envvar="FEDGE_SERVER", help="fedge server HOST:PORT")]
INSECURE_OPT = Annotated[bool, typer.Option("--insecure", help="plaintext Control channel (loopback only)")]
ADMIN_OPT = Annotated[
    str | None,
    typer.Option(
        "--admin-dir", envvar="FEDGE_ADMIN_DIR", help="dir with ca.pem, admin.pem, admin.key (mTLS)"
    ),
]
DEFAULT_APP = "fedge.server.app:app"
SECAGG_OPT = Annotated[
    bool, typer.Option("--secagg", help="secure aggregation (SecAgg+): the server learns only the sum")
]
# Run-setting flags default to "not given" (None): fedge's ServerApp then uses RunSettings' default
# (fedge/server/run_settings.py, the one place a run setting and its default are defined).
SECAGG_K_OPT = Annotated[
    int | None, typer.Option("--secagg-k", help="secagg neighbours per client (0: auto)")
]
SECAGG_T_OPT = Annotated[
    int | None, typer.Option("--secagg-t", help="secagg shares to unmask (0: auto, k/2+1)")
]
CLIP_OPT = Annotated[float | None, typer.Option("--clip", help="L2 bound on each client update (0: none)")]
QUANT_BITS_OPT = Annotated[
    int | None, typer.Option("--quant-bits", help="secagg fixed-point bits per element")
]
DP_NOISE_OPT = Annotated[float | None, typer.Option("--dp-noise", help="DP noise multiplier σ (0: DP off)")]
DP_DELTA_OPT = Annotated[float | None, typer.Option("--dp-delta", help="δ at which ε is reported")]
MODE_OPT = Annotated[
    str | None,
    typer.Option("--mode", help="sync (rounds) or async (buffered asynchronous aggregation, FedBuff)"),
]
BUFFER_OPT = Annotated[int | None, typer.Option("--buffer", help="async: updates per model version (K)")]
MAX_STALENESS_OPT = Annotated[
    int | None, typer.Option("--max-staleness", help="async: reject updates more versions old than this")
]


def async_sets(mode: str | None, buffer: int | None, max_staleness: int | None) -> list[str]:
    """The asynchronous-aggregation flags as run-config assignments (only those given)."""
    given = (("mode", mode), ("buffer", buffer), ("max-staleness", max_staleness))
    return [f"{key}={value}" for key, value in given if value is not None]


def privacy_sets(
    secagg: bool,
    secagg_k: int | None,
    secagg_t: int | None,
    clip: float | None,
    quant_bits: int | None,
    dp_noise: float | None,
    dp_delta: float | None,
) -> list[str]:
    """The privacy flags as run-config assignments (only those given)."""
    sets = [f"secagg={str(secagg).lower()}"] if secagg else []
    for key, value in (
        ("secagg-k", secagg_k),
        ("secagg-t", secagg_t),
        ("clip", clip),
        ("quant-bits", quant_bits),
        ("dp-noise", dp_noise),
        ("dp-delta", dp_delta),
    ):
        if value is not None:
            sets.append(f"{key}={value}")
    return sets


class RunFailed(FedgeError):
    """A run ended in failure; the CLI exits 1 (not a usage error)."""

    exit_code = 1


def client_for(server: str, insecure: bool, admin_dir: str | None = None) -> ControlClient:
    """A Control client: mTLS with the admin certificate, or plaintext under the loopback rules."""
    require_insecure_allowed(server, insecure, bool(admin_dir), "pass --admin-dir (or set FEDGE_ADMIN_DIR)")
    return ControlClient(server, admin_dir=None if insecure else admin_dir)


def build_run_config(
    task: str | None,
    rounds: int | None,
    strategy: str | None,
    min_clients: int | None,
    sets: list[str] | None,
    server_app: str,
    app_dir: str | None = None,
) -> dict[str, Any]:
    """Flags → Flower run config (only the settings given; ``None`` = not given).

    As ``flwr run``: another app's config starts from its ``[tool.flwr.app.config]``
    (:mod:`fedge.appconfig`), the flags given go over it, ``--set`` over those, so an app keeps its
    own ``num-server-rounds`` unless ``--rounds`` is given. For fedge's own app the config is parsed
    into :class:`RunSettings` here, so every check the ServerApp would make (unknown keys, types,
    strategy, secagg and DP setup) fails before a run exists; ``num-server-rounds`` is then always
    set, so the run list shows the planned rounds.
    """
    own = server_app == DEFAULT_APP
    config: dict[str, Any] = {}
    if not own:
        from fedge.appconfig import app_config, find_project

        config = app_config(find_project(server_app, app_dir))
    given = {"task": task, "num-server-rounds": rounds, "strategy": strategy, "min-clients": min_clients}
    config.update({key: value for key, value in given.items() if value is not None})
    config.update(parse_assignments(sets))
    if own:
        from fedge.server.run_settings import RunSettings  # imports torch: only when needed

        config.setdefault("num-server-rounds", RunSettings.from_run_config(config).num_server_rounds)
    return config


@run_app.command("start")
def start(
    server: SERVER_OPT = "127.0.0.1:9092",
    task: Annotated[str | None, typer.Option(help="digits, mnist5k, charlm or package.module:attr")] = None,
    rounds: Annotated[int | None, typer.Option(help="number of federated rounds")] = None,
    strategy: Annotated[str | None, typer.Option(help="fedavg, fedprox, fedadam, krum, …")] = None,
    min_clients: Annotated[int | None, typer.Option(help="clients required per round")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="run config key=value (repeatable)")] = None,
    server_app: Annotated[str, typer.Option(help="Flower ServerApp as package.module:attr")] = DEFAULT_APP,
    app_dir: Annotated[str, typer.Option(help="directory holding the app's package")] = ".",
    detach: Annotated[bool, typer.Option(help="print the run id and return")] = False,
    secagg: SECAGG_OPT = False,
    secagg_k: SECAGG_K_OPT = None,
    secagg_t: SECAGG_T_OPT = None,
    clip: CLIP_OPT = None,
    quant_bits: QUANT_BITS_OPT = None,
    dp_noise: DP_NOISE_OPT = None,
    dp_delta: DP_DELTA_OPT = None,
    select: SELECT_OPT = None,
    require: REQUIRE_OPT = None,
    secret_sampling: SECRET_SAMPLING_OPT = False,
    compress: COMPRESS_OPT = None,
    mode: MODE_OPT = None,
    buffer: BUFFER_OPT = None,
    max_staleness: MAX_STALENESS_OPT = None,
    insecure: INSECURE_OPT = False,
    admin_dir: ADMIN_OPT = None,
    verbose: logs.VERBOSE_OPT = 0,
) -> None:
    """Start a federated run and follow it with a progress bar.

    Run settings not given take the ServerApp's defaults (fedge's: ``RunSettings``).
    """
    logs.setup(verbose)
    sets = [
        *fleet_sets(select, require, secret_sampling, compress),
        *privacy_sets(secagg, secagg_k, secagg_t, clip, quant_bits, dp_noise, dp_delta),
        *async_sets(mode, buffer, max_staleness),
        *(set_ or []),
    ]
    config = build_run_config(task, rounds, strategy, min_clients, sets, server_app, app_dir)
    client = client_for(server, insecure, admin_dir)
    status = client.start_run(server_app, config, str(Path(app_dir).resolve()))
    if detach:
        print(status.run_id)
        return
    follow(client, status.run_id, int(config.get("num-server-rounds", 0) or 0), verbose=verbose)


def follow(
    client: ControlClient, run_id: int, num_rounds: int, console: Console | None = None, verbose: int = 0
) -> dict[str, Any]:
    """Render a run's events until it ends; returns the final round metrics, raises RunFailed.

    A resumed run's log holds how its earlier attempt ended before ``run-resumed``: only the
    last ending counts. With ``verbose`` (``-v``) every other event is printed too (round
    starts, exports, rejected updates, node failures).
    """
    console = console or Console(stderr=True)
    console.print(f"run [bold]{run_id}[/bold] started")
    last: dict[str, Any] = {}
    failure: RunFailed | None = None
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as bar:
        task_id = bar.add_task("rounds", total=num_rounds or None)
        for event in client.events(run_id, replay=True):
            data = json.loads(event.data_json or "{}")
            if event.kind == EventKind.ROUND_FINISHED:
                metrics = data.get("metrics", {})
                rnd = int(data.get("round", 0))
                unit = "version" if "version" in metrics else "round"  # async runs number versions
                if rnd > 0:
                    last = {"round": rnd, **metrics}
                    bar.update(task_id, completed=rnd, description=f"{unit} {rnd} {brief(metrics)}")
                console.print(f"{unit} {rnd:>3}: {brief(metrics)}", soft_wrap=True)
            elif event.kind == EventKind.RUN_FINISHED:
                bar.update(task_id, completed=num_rounds)
            elif event.kind == EventKind.RUN_RESUMED:
                failure = None
                console.print(f"resumed after round {data.get('round')}")
            elif verbose and event.kind not in (EventKind.RUN_FAILED, EventKind.RUN_STOPPED):
                console.print(f"{event.kind} {event.data_json}", soft_wrap=True, markup=False)
            if event.kind in (EventKind.RUN_FAILED, EventKind.RUN_STOPPED):
                failure = RunFailed(
                    f"run {run_id} {event.kind[4:]}: {data.get('error', '')}",
                    data.get("hint", "") or f"see `fedge run logs {run_id}`",
                )
    if failure is not None:
        raise failure
    status = client.get_run(run_id)
    console.print(f"run {run_id} finished: {brief(last)}", soft_wrap=True)
    run_dir = Path(status.run_dir)
    for label, path in (
        ("run directory", run_dir),
        ("summary", run_dir / "summary.json"),
        ("metrics per round", run_dir / "metrics.jsonl"),
        ("plots", run_dir / "plots"),
    ):
        console.print(f"{label}: {path}", soft_wrap=True)  # whole paths, also when not a TTY
    return last


#: What one console line per round shows, those present: quality, losses, and the privacy spent.
BRIEF_KEYS = (
    "central-accuracy",
    "eval-acc",
    "central-mae",
    "eval-mae",
    "central-loss",
    "train-loss",
    "dp-epsilon",
    "staleness-mean",  # async runs
    "stale-rejected",
)


def brief(metrics: dict[str, Any]) -> str:
    """One round's metrics as ``key=value`` pairs for the console.

    Those of :data:`BRIEF_KEYS` present; for another app's round, as the grid recorded it
    (:mod:`fedge.server.progress`), its accuracy/loss keys and any failure counts.
    """
    keys = [k for k in BRIEF_KEYS if k in metrics]
    if not keys:
        numeric = [k for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        keys = [k for k in numeric if "acc" in k or "loss" in k][:3]
        keys += [k for k in numeric if k.endswith(("-replies", "-failures", "-rejected")) and metrics[k]][:4]
    return (
        "  ".join(
            f"{k}={metrics[k]:.4f}" if isinstance(metrics[k], float) else f"{k}={metrics[k]}" for k in keys
        )
        or "-"
    )


@run_app.command("list")
def list_runs(
    server: SERVER_OPT = "127.0.0.1:9092", insecure: INSECURE_OPT = False, admin_dir: ADMIN_OPT = None
) -> None:
    """All runs, newest last."""
    table = Table("run id", "state", "round", "app", "started")
    for r in client_for(server, insecure, admin_dir).list_runs():
        table.add_row(
            str(r.run_id),
            r.state,
            f"{r.current_round}/{r.num_rounds}",
            r.server_app,
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.created_at)),
        )
    Console().print(table)


@run_app.command("status")
def status(
    run_id: int,
    server: SERVER_OPT = "127.0.0.1:9092",
    insecure: INSECURE_OPT = False,
    admin_dir: ADMIN_OPT = None,
) -> None:
    """One run: state, error, and a compact per-round table."""
    r: control_pb2.RunStatus = client_for(server, insecure, admin_dir).get_run(run_id)
    console = Console()
    head = f"run {r.run_id}: {r.state}  round {r.current_round}/{r.num_rounds}  dir {r.run_dir}"
    console.print(head, soft_wrap=True, markup=False)
    if r.error:
        console.print(f"error: {r.error}", soft_wrap=True, markup=False)
    rounds = json.loads(r.rounds_json or "[]")
    if r.state in RESUMABLE_STATES:  # rounds are reported only once committed
        committed = max((int(row["round"]) for row in rounds), default=None)
        console.print(
            f"{r.state}: no round committed, cannot resume"
            if committed is None
            else f"{r.state} after committed round {committed}/{r.num_rounds}: "
            f"continue with `fedge run resume {r.run_id}`",
            soft_wrap=True,
            markup=False,
        )
    numeric = {k for row in rounds for k in row if k != "round" and isinstance(row[k], (int, float))}
    columns = {k: c for k, c in STATUS_COLUMNS.items() if k in numeric}
    columns = columns or {k: (k, 4) for k in sorted(numeric)}
    table = Table("round", *(h for h, _ in columns.values()), box=None, padding=(0, 1), pad_edge=False)
    if "central-accuracy" in columns:
        table.caption = "acc, loss: central evaluation; eval: on the clients' held-out data"
    for row in rounds:
        table.add_row(str(row["round"]), *(_fmt(row.get(k), digits) for k, (_, digits) in columns.items()))
    console.print(table)


#: Columns of `fedge run status` (metric -> header, decimals), those the run recorded: < 80
#: characters wide. Runs of other apps, which record none of them, get all their numeric metrics.
STATUS_COLUMNS = {
    "central-accuracy": ("acc", 4),
    "central-loss": ("loss", 4),
    "eval-acc": ("eval\nacc", 4),
    "eval-loss": ("eval\nloss", 4),
    "train-loss": ("train\nloss", 4),
    "train-replies": ("clients", 0),
    "train-failures": ("failed", 0),
    "train-rejected": ("rejected", 0),
    "central-mae": ("mae", 3),
    "eval-mae": ("eval\nmae", 3),
    "dp-epsilon": ("ε", 2),
    "round-seconds": ("secs", 2),
}


def _fmt(value: Any, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


@run_app.command("logs")
def logs_cmd(
    run_id: int,
    server: SERVER_OPT = "127.0.0.1:9092",
    insecure: INSECURE_OPT = False,
    admin_dir: ADMIN_OPT = None,
    follow_: Annotated[bool, typer.Option("--follow", "-f", help="keep printing until the run ends")] = False,
) -> None:
    """A run's event log (with --follow, live)."""
    for e in client_for(server, insecure, admin_dir).events(run_id, replay=True, follow=follow_):
        print(f"{time.strftime('%H:%M:%S', time.localtime(e.at))} {e.kind} {e.data_json}", flush=True)


@run_app.command("stop")
def stop(
    run_id: int,
    server: SERVER_OPT = "127.0.0.1:9092",
    insecure: INSECURE_OPT = False,
    admin_dir: ADMIN_OPT = None,
) -> None:
    """Stop a running run."""
    r = client_for(server, insecure, admin_dir).stop_run(run_id)
    print(f"run {r.run_id}: {r.state}")


@run_app.command("resume")
def resume(
    run_id: int,
    server: SERVER_OPT = "127.0.0.1:9092",
    insecure: INSECURE_OPT = False,
    admin_dir: ADMIN_OPT = None,
    detach: Annotated[bool, typer.Option(help="print the run id and return")] = False,
    verbose: logs.VERBOSE_OPT = 0,
) -> None:
    """Continue an interrupted, failed or stopped run from its last committed round."""
    logs.setup(verbose)
    client = client_for(server, insecure, admin_dir)
    status = client.resume_run(run_id)
    if detach:
        print(status.run_id)
        return
    follow(client, status.run_id, status.num_rounds, verbose=verbose)


@run_app.command("plot")
def plot(
    run_id: Annotated[int | None, typer.Argument(help="run id (asks the server for its directory)")] = None,
    run_dir: Annotated[
        Path | None, typer.Option("--run-dir", help="a run directory on this machine (no server needed)")
    ] = None,
    server: SERVER_OPT = "127.0.0.1:9092",
    insecure: INSECURE_OPT = False,
    admin_dir: ADMIN_OPT = None,
) -> None:
    """Redraw a run's plots/accuracy.png and plots/loss.png from its metrics.jsonl."""
    from fedge.server.plots import read_metrics, write_plots

    if run_dir is None:
        if run_id is None:
            raise FedgeError("give a run id or --run-dir", "e.g. `fedge run plot 1234567890`")
        run_dir = Path(client_for(server, insecure, admin_dir).get_run(run_id).run_dir)
    for path, lines in write_plots(run_dir, read_metrics(run_dir), f"run {run_id or run_dir.name}").items():
        print(f"{path}  ({', '.join(f'{k}: {len(v)} points' for k, v in lines.items()) or 'no data'})")


os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
