"""``fedge client start``: run the edge daemon on this device.

Everything a user can get wrong (config, plaintext on a real network, missing data file, a bad
ClientApp reference) is checked before the first connection attempt, so a misconfigured device
fails at once with ``error:``/``hint:`` instead of retrying forever.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from fedge import accel, config, logs
from fedge.eligibility import check_tags
from fedge.errors import FedgeError
from fedge.security import check_name

#: Environment variable `fedge client enroll` reads the one-time token from (after the flags).
ENROLL_TOKEN_ENV = "FEDGE_ENROLL_TOKEN"

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Run the edge client daemon.")
log = logging.getLogger("fedge.client")


def build_config(
    config_path: str | None,
    overrides: dict[str, object],
    node_config: list[str] | None,
    data: str | None,
) -> config.EdgeConfig:
    """File ``[edge]`` < flags; ``--node-config``/``--data`` are merged into node_config.

    ``data-path`` (from any source) must name an existing file: the daemon would otherwise only
    discover it when the first training instruction fails, possibly hours later.
    """
    cfg = config.load(config.EdgeConfig, config_path, "edge", overrides)
    if cfg.name:
        check_name(cfg.name, "device name")
    cfg.node_config = {**cfg.node_config, **config.parse_assignments(node_config, "--node-config")}
    if data is not None:
        cfg.node_config["data-path"] = data
    data_path = cfg.node_config.get("data-path")
    if data_path is not None:
        path = Path(str(data_path)).expanduser()
        if not path.exists():
            raise FedgeError(
                f"data file not found: {data_path}",
                "pass --data with this device's private data: a .npz, .csv or .parquet file, "
                "or an image folder (one sub-folder per class)",
            )
        cfg.node_config["data-path"] = str(path.resolve())
    return cfg


_Str = str | None


@app.command("start")
def start(
    config_file: Annotated[_Str, typer.Option("--config", help="TOML file with an \\[edge] table.")] = None,
    server: Annotated[_Str, typer.Option("--server", help="Server address HOST:PORT.")] = None,
    name: Annotated[_Str, typer.Option("--name", help="Device name (default: hostname).")] = None,
    state_dir: Annotated[_Str, typer.Option("--state-dir", help="Where per-run state is kept.")] = None,
    data: Annotated[
        _Str,
        typer.Option(
            "--data", help="Private data: .npz, .csv, .parquet or an image folder (node config data-path)."
        ),
    ] = None,
    node_config: Annotated[
        list[str] | None, typer.Option("--node-config", help="Node config key=value (repeatable).")
    ] = None,
    client_app: Annotated[_Str, typer.Option("--client-app", help="ClientApp as PKG.MOD:ATTR.")] = None,
    app_dir: Annotated[_Str, typer.Option("--app-dir", help="Directory to import the app from.")] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Plaintext gRPC (loopback test federations only).")
    ] = False,
    server_name: Annotated[
        _Str, typer.Option("--server-name", help="Name in the server certificate, if not the host.")
    ] = None,
    threads: Annotated[
        int | None, typer.Option("--threads", help="torch intra-op threads for training (default 1).")
    ] = None,
    max_wait: Annotated[
        float, typer.Option("--max-wait", help="Give up after this many seconds unconnected (0: never).")
    ] = 0.0,
    inference_address: Annotated[
        _Str,
        typer.Option(
            "--inference-address", help='EdgeInference HOST:PORT (default 127.0.0.1:0; "" turns it off).'
        ),
    ] = None,
    inference_tls_dir: Annotated[
        _Str,
        typer.Option(
            "--inference-tls-dir", help="Serve inference with mTLS: dir with server.pem, server.key, ca.pem."
        ),
    ] = None,
    metrics_address: Annotated[
        _Str,
        typer.Option(
            "--metrics-address", help="HOST:PORT for Prometheus /metrics (off by default; port 0 = any)."
        ),
    ] = None,
    device: Annotated[
        _Str, typer.Option("--device", help="Train/evaluate on: auto (CUDA, MPS, CPU), cpu, cuda[:i] or mps.")
    ] = None,
    tag: Annotated[
        list[str] | None,
        typer.Option("--tag", help="Operator tag key=value (repeatable; runs --select by tags)."),
    ] = None,
    signals_file: Annotated[
        _Str,
        typer.Option("--signals-file", help="JSON of charging/idle/unmetered, read each heartbeat."),
    ] = None,
    signals_command: Annotated[
        _Str,
        typer.Option("--signals-command", help="Command printing that JSON (not with --signals-file)."),
    ] = None,
    verbose: logs.VERBOSE_OPT = 0,
) -> None:
    """Connect to the server and serve its instructions until SIGTERM/SIGINT."""
    logs.setup(verbose)
    overrides: dict[str, object] = {
        "server": server,
        "name": name,
        "state_dir": state_dir,
        "client_app": client_app,
        "app_dir": app_dir,
        "insecure": True if insecure else None,
        "threads": threads,
        "server_name": server_name,
        "inference_address": inference_address,
        "inference_tls_dir": inference_tls_dir,
        "metrics_address": metrics_address,
        "device": device,
        "tags": tag or None,
        "signals_file": signals_file,
        "signals_command": signals_command,
    }
    cfg = build_config(config_file, overrides, node_config, data)
    # Resolved once, here: the ClientApp reads it from node_config, the server from Hello.
    cfg.device = accel.resolve(cfg.device)
    cfg.node_config["device"] = cfg.device
    from .tls import check_certificate, is_enrolled

    enrolled = not cfg.insecure and is_enrolled(cfg.state_dir)
    config.require_insecure_allowed(
        cfg.server, cfg.insecure, enrolled, "enroll this device first with `fedge client enroll`"
    )
    if enrolled:
        cfg.name = check_certificate(cfg.state_dir)  # identity = certificate subject
    if cfg.metrics_address:
        config.split_address(cfg.metrics_address)
    check_tags(cfg.tags, "--tag / tags")
    if max_wait < 0:
        raise FedgeError(f"--max-wait must be ≥ 0, got {max_wait:g}", "use 0 to wait forever")
    try:
        Path(cfg.state_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FedgeError(
            f"cannot create state dir {cfg.state_dir}: {exc.strerror}", "pass a writable --state-dir"
        ) from None

    if cfg.threads < 1:
        raise FedgeError(f"threads must be ≥ 1, got {cfg.threads}", "use 1 on small devices")
    # Before torch is imported: a small device runs one task at a time, and torch's default
    # thread pool collapses under contention (measured here: 0.25 s → 12 s per local epoch).
    os.environ["OMP_NUM_THREADS"] = str(cfg.threads)
    # Imported here so `fedge --help` stays fast; the app (and torch) loads with the first task.
    from .daemon import EdgeDaemon, install_signal_handlers
    from .runtime import DeferredClientApp

    loaded = DeferredClientApp(cfg.client_app, cfg.app_dir)
    daemon = EdgeDaemon(cfg, loaded, max_wait=max_wait)
    restore = install_signal_handlers(daemon)
    log.info("edge daemon %s starting; server %s", daemon.name, cfg.server)
    try:
        daemon.run_forever()
    finally:
        restore()
    log.info("edge daemon stopped")


@app.command("enroll")
def enroll_cmd(
    server: Annotated[str, typer.Option("--server", help="The server's enrollment address HOST:PORT.")],
    ca: Annotated[str, typer.Option("--ca", help="The fedge CA certificate (ca.pem).")],
    name: Annotated[str, typer.Option("--name", help="This device's name (must match the token).")],
    state_dir: Annotated[str, typer.Option("--state-dir", help="Where the keys and certificate go.")],
    server_name: Annotated[
        _Str, typer.Option("--server-name", help="Name in the server certificate.")
    ] = None,
    token: Annotated[
        _Str,
        typer.Option(
            "--token",
            help="One-time token from `fedge pki token create` (visible to other local users while "
            "enrolling: prefer --token-file or FEDGE_ENROLL_TOKEN).",
        ),
    ] = None,
    token_file: Annotated[
        _Str, typer.Option("--token-file", help="File holding the one-time token ('-': standard input).")
    ] = None,
) -> None:
    """Enroll this device: make its keys here, get its certificate from the server's CA."""
    from .tls import enroll

    config.split_address(server)
    token = _enroll_token(token, token_file)
    check_name(name, "device name")
    ca_path = Path(ca)
    if not ca_path.is_file():
        raise FedgeError(f"CA certificate not found: {ca}", "copy ca.pem from the server's PKI dir")
    identity = enroll(server, ca_path.read_bytes(), token, name, state_dir, server_name or "")
    print(f"enrolled as {identity}; certificate in {Path(state_dir) / 'tls.pem'}")


def _enroll_token(token: str | None, token_file: str | None) -> str:
    """The token from ``--token``, ``--token-file`` or ``FEDGE_ENROLL_TOKEN``, exactly one of them.

    Why a file or the environment: a ``--token`` argument sits in ``/proc/<pid>/cmdline``, which
    every local user can read for as long as enrollment runs.
    """
    env = os.environ.get(ENROLL_TOKEN_ENV, "")
    given = [what for what, value in (("--token", token), ("--token-file", token_file)) if value]
    if len(given) > 1:
        raise FedgeError("both --token and --token-file were given", "pass the token one way only")
    if token_file:
        try:
            text = sys.stdin.read() if token_file == "-" else Path(token_file).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise FedgeError(f"cannot read the token file {token_file}: {exc}", "check the path") from None
        token = text.strip()
    token = (token or env).strip()
    if not token:
        raise FedgeError(
            "no enrollment token",
            f"pass --token-file FILE or set {ENROLL_TOKEN_ENV} to the token `fedge pki token create` printed",
        )
    return token


def _register_models() -> None:
    """``fedge client model list|use`` and ``fedge client predict`` (fedge.client.model_cli)."""
    from .model_cli import model_app, predict

    app.add_typer(model_app, name="model", help="Models stored on this device: list, use (rollback).")
    app.command("predict", help="Classify a .npy with the model the local daemon serves.")(predict)


_register_models()
