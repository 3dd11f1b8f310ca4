"""Run fedge's (or any) Flower apps on Flower's Ray simulation engine.

fedge's own transport is for real devices; to scale a simulation beyond one machine, the same
``ServerApp``/``ClientApp`` run unchanged on Flower's Ray engine, which gives each virtual node
``partition-id``/``num-partitions`` in its node config (fedge's ClientApp then trains on that
partition of the task's built-in data). Set ``RAY_ADDRESS`` to use an existing Ray cluster;
otherwise a small local Ray instance is started (one CPU per client, no dashboard) and shut
down afterwards.

This uses Flower's internal ``_run_simulation`` because the public ``run_simulation`` cannot
pass the ServerApp a ``Context`` with a ``run_config`` — and that is how task, rounds and
strategy reach fedge's ServerApp.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any

from flwr.app import Context, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from fedge.appconfig import app_config, find_project
from fedge.apps import load_object
from fedge.errors import FedgeError


def run_on_ray(
    run_config: dict[str, Any],
    num_clients: int,
    *,
    server_app_ref: str = "fedge.server.app:app",
    client_app_ref: str = "fedge.client.app:app",
    app_dir: str | None = None,
    gpus_per_client: float = 0.0,
) -> list[dict[str, Any]]:
    """Run the apps with ``num_clients`` virtual nodes; return the rows of ``metrics.jsonl``.

    ``run_config`` goes to the ServerApp's context (fedge's ServerApp sends clients what they
    need). ``run-dir`` defaults to ``fedge-runs/<run_id>``, as in fedge's ServerApp; a ServerApp
    that writes no ``metrics.jsonl`` there yields an empty list. ``gpus_per_client`` is Flower's
    ``client_resources["num_gpus"]`` (fractions share a GPU: 0.25 runs four clients on each);
    fedge's ClientApp then computes on ``auto``, which picks the GPU Ray made visible.
    """
    if num_clients < 1:
        raise FedgeError(f"invalid number of clients: {num_clients}", "use 1 or more")
    check_gpus_per_client(gpus_per_client)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silences a Ray FutureWarning
    try:
        import ray
        from flwr.simulation.run_simulation import _run_simulation
    except ImportError:
        raise FedgeError(
            "the Ray simulation engine is not installed", "pip install 'flwr[simulation]'"
        ) from None
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.constant import NOOP_FEDERATION_ID
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity
    from flwr.supercore.telemetry import EventType

    server_app = _load(server_app_ref, app_dir, ServerApp, "ServerApp")
    client_app = _load(client_app_ref, app_dir, ClientApp, "ClientApp")

    run_id = secrets.randbits(63)
    config = dict(run_config)
    config.setdefault("run-dir", f"fedge-runs/{run_id}")
    run = Run.create_empty(run_id)
    run.primary_task_id = 1
    run.federation_id = NOOP_FEDERATION_ID
    # Messages built by the ServerApp read this process-wide identity (as in Flower's own runtime).
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run_id, SUPERLINK_NODE_ID
    context = Context(run_id=run_id, node_id=0, node_config={}, state=RecordDict(), run_config=config)
    backend_config: dict[str, Any] = {
        "client_resources": {"num_cpus": 1, "num_gpus": float(gpus_per_client)},
        "init_args": {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False},
    }
    started_ray = not ray.is_initialized()
    # As with `flwr run`: a Flower project's ClientApps read its [tool.flwr.app.config] from
    # the project directory (Flower passes the ServerApp's overrides to clients only by key).
    project = find_project(server_app_ref, app_dir)
    project_dir = str(project.parent) if project and app_config(project) else ""
    try:
        _run_simulation(
            num_supernodes=num_clients,
            app_dir=project_dir,
            is_app=bool(project_dir),  # Flower gives nodes the project's config only for apps
            exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
            client_app=client_app,
            server_app=server_app,
            backend_name="ray",
            backend_config=backend_config,
            server_app_context=context,
            run=run,
        )
    finally:
        if started_ray and ray.is_initialized():
            ray.shutdown()
    metrics = Path(str(config["run-dir"])) / "metrics.jsonl"
    if not metrics.is_file():
        return []
    return [json.loads(line) for line in metrics.read_text(encoding="utf-8").splitlines() if line.strip()]


def check_gpus_per_client(value: float) -> None:
    """Ray takes fractions up to 1 or whole numbers of GPUs per client, never a negative count."""
    if value < 0 or (value > 1 and not float(value).is_integer()):
        raise FedgeError(
            f"invalid --gpus-per-client {value:g}",
            "use a fraction between 0 and 1 (e.g. 0.25: four clients share a GPU) or a whole number",
        )


def _load(ref: str, app_dir: str | None, kind: type, name: str) -> Any:
    obj = load_object(ref, app_dir, kind=name)
    if not isinstance(obj, kind):
        raise FedgeError(
            f"'{ref}' is a {type(obj).__name__}, not a Flower {name}", f"point it at a {name} instance"
        )
    return obj
