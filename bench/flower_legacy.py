"""Flower's own SecAgg+ on the bench model: legacy ``ServerApp`` + ``NumPyClient``, Ray simulation engine.

    python bench/flower_legacy.py --mode {plain,secagg} --clients N --rounds R --k K --t T --out FILE

Flower 1.41's SecAgg+ exists only for its legacy API: a ``ServerApp`` whose main runs
``DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...))`` over a ``LegacyContext`` with a legacy
``FedAvg``, and a ``ClientApp(client_fn=..., mods=[secaggplus_mod])`` around a ``NumPyClient``.
``--mode plain`` runs the same apps with a plain ``DefaultWorkflow()`` and no mod, so the ratio
isolates SecAgg+. The client trains exactly as ``bench/flower_app/app.py`` does (same MLP, same
initial weights, one SGD step of batch 32 on random data seeded by the round, one torch thread,
torch warm-up outside the timed region).

Timing: :class:`TimedLegacyFedAvg` stamps ``configure_fit`` (which SecAggPlusWorkflow calls in its
setup stage) and the end of ``aggregate_fit`` (called after unmasking), so one round's window covers
all four SecAgg+ stages -- the same window ``TimedFedAvg`` covers on fedge. Run in its own process by
``bench/secagg.py`` (Ray's global state, logging and the process-wide task identity stay out of the
caller); writes ``{"rounds": [...]}`` to ``--out``.

``server_app``/``client_app`` are the same apps for ``fedge run start`` (Flower's SecAgg+ running on
fedge's transport: real daemons, mTLS, sealed updates), configured by the run config.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, cast

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# Ray workers are separate processes started by the local raylet, which inherits this environment:
# they unpickle the ClientApp, which refers to this module by name.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from flwr.client import ClientApp, NumPyClient  # noqa: E402
from flwr.client.mod import secaggplus_mod  # noqa: E402
from flwr.common import Context, FitRes, NDArrays, Parameters, Scalar, ndarrays_to_parameters  # noqa: E402
from flwr.server import LegacyContext, ServerApp, ServerConfig  # noqa: E402
from flwr.server.client_proxy import ClientProxy  # noqa: E402
from flwr.server.strategy import FedAvg  # noqa: E402
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow  # noqa: E402

from bench.flower_app.app import _warm_up, make_model  # noqa: E402

BATCH_SIZE, LOCAL_STEPS = 32, 1  # bench/flower_app/pyproject.toml defaults


class MLPClient(NumPyClient):
    """The bench app's train step as a legacy NumPyClient."""

    def fit(self, parameters: NDArrays, config: dict[str, Scalar]) -> tuple[NDArrays, int, dict[str, Scalar]]:
        torch.set_num_threads(1)
        warmup_s = _warm_up()
        t0 = time.perf_counter()
        model = make_model()
        keys = list(model.state_dict().keys())
        model.load_state_dict(
            {k: torch.from_numpy(np.asarray(v)) for k, v in zip(keys, parameters, strict=True)}
        )
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        gen = torch.Generator().manual_seed(int(config["server-round"]))
        for _ in range(LOCAL_STEPS):
            x = torch.randn(BATCH_SIZE, 784, generator=gen)
            y = torch.randint(0, 10, (BATCH_SIZE,), generator=gen)
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        out = [v.detach().numpy() for v in model.state_dict().values()]
        compute_s = time.perf_counter() - t0
        return out, BATCH_SIZE * LOCAL_STEPS, {"compute-s": compute_s, "warmup-s": warmup_s}


def client_fn(context: Context) -> Any:
    return MLPClient().to_client()


class TimedLegacyFedAvg(FedAvg):
    """Legacy FedAvg recording each round's wall time from configure_fit to the end of aggregate_fit."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rounds: list[dict[str, Any]] = []
        self._t_start = 0.0

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: Any) -> Any:
        self._t_start = time.perf_counter()
        return super().configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[Any],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        t_received = time.perf_counter()
        out = super().aggregate_fit(server_round, results, failures)
        t_end = time.perf_counter()
        computes = [float(cast(float, r.metrics.get("compute-s", 0.0))) for _, r in results]
        self.rounds.append(
            {
                "round": server_round,
                "wall_s": t_end - self._t_start,
                "until_aggregate_s": t_received - self._t_start,
                "max_client_compute_s": max(computes, default=0.0),
                "sum_client_compute_s": sum(computes),
                "n_replies": len(results),
                "n_errors": len(failures),
            }
        )
        return out


def build_apps(
    secagg: bool, num_clients: int, num_rounds: int, k: int, t: int
) -> tuple[ServerApp, ClientApp, TimedLegacyFedAvg]:
    """Legacy ServerApp/ClientApp pair; with ``secagg`` Flower's SecAgg+ workflow and client mod."""
    torch.manual_seed(0)
    initial = [v.detach().numpy() for v in make_model().state_dict().values()]
    strategy = TimedLegacyFedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=num_clients,
        min_available_clients=num_clients,
        initial_parameters=ndarrays_to_parameters(initial),
        on_fit_config_fn=lambda server_round: {"server-round": server_round},
    )
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Any, context: Context) -> None:
        legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=num_rounds), strategy=strategy)
        # Flower counts a client's own retained share in num_shares: k neighbours -> k + 1 shares.
        fit = SecAggPlusWorkflow(num_shares=k + 1, reconstruction_threshold=t) if secagg else None
        DefaultWorkflow(fit_workflow=fit)(grid, legacy)

    client_app = ClientApp(client_fn=client_fn, mods=[secaggplus_mod] if secagg else [])
    return server_app, client_app, strategy


# The same legacy apps, unchanged, run *on fedge* (``bench/secagg.py`` via ``bench.fedge_runner``):
# settings from the run config, the strategy's round timings written to ``timings-path``.
server_app = ServerApp()
client_app = ClientApp(client_fn=client_fn, mods=[secaggplus_mod])


@server_app.main()
def _on_fedge(grid: Any, context: Context) -> None:
    config = context.run_config
    rounds = int(cast(int, config["num-server-rounds"]))
    app, _, strategy = build_apps(
        bool(config.get("flower-secagg", True)),
        int(cast(int, config["min-clients"])),
        rounds,
        int(cast(int, config["flower-k"])),
        int(cast(int, config["flower-t"])),
    )
    app(grid, context)
    Path(str(config["timings-path"])).write_text(json.dumps({"rounds": strategy.rounds}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=("plain", "secagg"), required=True)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--k", type=int, required=True, help="SecAgg+ neighbours per client")
    ap.add_argument("--t", type=int, required=True, help="SecAgg+ reconstruction threshold")
    ap.add_argument("--cpus-per-client", type=float, default=0.0, help="Ray num_cpus per client (0: cores/N)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    import ray
    from flwr.simulation import run_simulation

    cores = os.cpu_count() or 1
    per_client = args.cpus_per_client or cores / args.clients  # all N clients run concurrently
    server_app, client_app, strategy = build_apps(
        args.mode == "secagg", args.clients, args.rounds, args.k, args.t
    )
    backend_config: dict[str, Any] = {
        "client_resources": {"num_cpus": per_client, "num_gpus": 0.0},
        "init_args": {
            "num_cpus": cores,
            "include_dashboard": False,
            "logging_level": logging.WARNING,
            "log_to_driver": False,
        },
    }
    t0 = time.perf_counter()
    try:
        run_simulation(server_app, client_app, args.clients, backend_config=backend_config)
    finally:
        if ray.is_initialized():
            ray.shutdown()
    result = {
        "mode": args.mode,
        "clients": args.clients,
        "k": args.k,
        "t": args.t,
        "cpus_per_client": per_client,
        "total_s": time.perf_counter() - t0,
        "rounds": strategy.rounds,
    }
    args.out.write_text(json.dumps(result, indent=2))
    if len(strategy.rounds) != args.rounds:
        print(f"only {len(strategy.rounds)} of {args.rounds} rounds completed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
