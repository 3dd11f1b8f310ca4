"""Round-overhead benchmark app: a ~1M-parameter MLP and one fixed SGD step per round.

Written only against ``flwr`` + ``torch`` so the identical app measures both engines:
stock Flower loads this file from the installed FAB as the top-level module ``app``,
fedge loads it as ``bench.flower_app.app`` -- hence no relative imports.

Each client reports ``compute-s``, the time spent inside its own train handler, and
the ServerApp records per-round wall time, so overhead = wall - slowest client compute
is attributable to orchestration (transport, scheduling, process start-up, polling).
"""

from __future__ import annotations

import functools
import json
import os
import time
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

ARRAYS_KEY = "arrays"
METRICS_KEY = "metrics"


@functools.cache
def _config_defaults() -> dict[str, Any]:
    manifest = tomllib.loads((Path(__file__).parent / "pyproject.toml").read_text())
    defaults: dict[str, Any] = manifest["tool"]["flwr"]["app"]["config"]
    return defaults


def run_config(context: Context) -> dict[str, Any]:
    """The run config over the defaults in the sibling ``pyproject.toml``.

    Stock Flower already merges those defaults; fedge may pass only the keys set with
    ``--set``. The manifest stays the single source of truth either way (it is also
    present next to the installed module inside a FAB).
    """
    return {**_config_defaults(), **context.run_config}


def make_model() -> torch.nn.Module:
    """784-1024-256-10 MLP: 1,068,810 float32 parameters (~4.3 MB per message)."""
    return torch.nn.Sequential(
        torch.nn.Linear(784, 1024),
        torch.nn.ReLU(),
        torch.nn.Linear(1024, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 10),
    )


def num_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- client

client_app = ClientApp()


_warm = False


def _warm_up() -> float:
    """Pay torch's one-off lazy initialisation (~0.8 s, mostly the first optimizer
    construction) outside the timed region, once per process.

    Otherwise ``compute-s`` would include a cold-start cost that a fresh ClientApp
    process pays every round and a warm one pays once -- that cost is orchestration
    overhead, not the fixed compute both engines are asked to do. Reported separately
    as ``warmup-s`` (0 when the process was already warm).
    """
    global _warm
    if _warm:
        return 0.0
    t0 = time.perf_counter()
    tiny = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(tiny.parameters(), lr=0.1)
    tiny(torch.zeros(1, 4)).sum().backward()
    opt.step()
    _warm = True
    return time.perf_counter() - t0


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """Load the global model, run ``local-steps`` SGD steps on random data, reply."""
    # One intra-op thread: ten clients share a couple of cores, and oversubscription
    # would make compute time depend on how many clients happen to overlap.
    torch.set_num_threads(1)
    warmup_s = _warm_up()
    cfg = run_config(context)
    batch_size = int(cfg["batch-size"])
    steps = int(cfg["local-steps"])
    server_round = cast(int, msg.content.config_records["config"]["server-round"])

    t0 = time.perf_counter()
    model = make_model()
    model.load_state_dict(msg.content.array_records[ARRAYS_KEY].to_torch_state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(server_round)
    loss = torch.zeros(())
    for _ in range(steps):
        x = torch.randn(batch_size, 784, generator=gen)
        y = torch.randint(0, 10, (batch_size,), generator=gen)
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
    arrays = ArrayRecord(model.state_dict())
    compute_s = time.perf_counter() - t0

    metrics = MetricRecord(
        {
            "num-examples": batch_size * steps,
            "train-loss": float(loss.item()),
            "compute-s": compute_s,
            "warmup-s": warmup_s,
        }
    )
    return Message(RecordDict({ARRAYS_KEY: arrays, METRICS_KEY: metrics}), reply_to=msg)


# --------------------------------------------------------------------------- server


class TimedFedAvg(FedAvg):
    """FedAvg that timestamps each train round from configure_train to end of aggregation.

    ``Strategy.start`` evaluates ``configure_train`` (node sampling included) right
    before ``grid.send_and_receive``, then calls ``aggregate_train``, so this window is
    exactly one federated train step as the orchestrator sees it.
    """

    def __init__(self, timings_path: str, meta: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.timings_path = timings_path
        self.meta = meta
        self.rounds: list[dict[str, Any]] = []
        self._t_start = 0.0

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._t_start = time.perf_counter()
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        t_received = time.perf_counter()
        result = super().aggregate_train(server_round, replies)
        t_end = time.perf_counter()
        ok = [m.content.metric_records[METRICS_KEY] for m in replies if not m.has_error()]
        computes = [cast(float, r["compute-s"]) for r in ok]
        warmups = [cast(float, r["warmup-s"]) for r in ok]
        self.rounds.append(
            {
                "round": server_round,
                "wall_s": t_end - self._t_start,
                "send_and_receive_s": t_received - self._t_start,
                "max_client_compute_s": max(computes, default=0.0),
                "sum_client_compute_s": sum(computes),
                "max_client_warmup_s": max(warmups, default=0.0),
                "n_replies": len(computes),
                "n_errors": len(replies) - len(computes),
            }
        )
        self.write(done=False)
        return result

    def write(self, done: bool) -> None:
        """Atomically rewrite the timings file, so a poller never reads half a file."""
        if not self.timings_path:
            return
        path = Path(self.timings_path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**self.meta, "done": done, "rounds": self.rounds}, indent=2))
        os.replace(tmp, path)


def _wait_for_nodes(grid: Grid, n: int, timeout_s: float) -> None:
    """Block until ``n`` nodes are connected so round 1 does not include node start-up."""
    deadline = time.monotonic() + timeout_s
    while len(list(grid.get_node_ids())) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {n} nodes connected after {timeout_s:.0f}s")
        time.sleep(0.2)


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = run_config(context)
    num_rounds = int(cfg["num-server-rounds"])
    n = int(cfg["min-clients"])
    model = make_model()
    secagg = bool(cfg.get("secagg", False))
    timed = TimedFedAvg(
        timings_path=str(cfg["timings-path"]),
        meta={
            "num_clients": n,
            "num_rounds": num_rounds,
            "model_params": num_parameters(model),
            "secagg": secagg,
        },
        fraction_train=1.0,
        fraction_evaluate=0.0,  # a round is exactly one train step
        min_train_nodes=n,
        min_available_nodes=n,
    )
    _wait_for_nodes(grid, n, float(cfg["node-wait-timeout"]))
    initial = ArrayRecord(model.state_dict())
    if secagg:
        # fedge's SecAgg+ (fedge only: imported here so stock Flower loads this app without fedge),
        # run by fedge's round loop. The timed window then spans all four stages: advertise, share,
        # masked input, unmask; plus per-stage wall times in <timings-path>.stages.json.
        from bench.secagg_stages import StageTimedSecureExchange
        from fedge.server.run_settings import RunSettings
        from fedge.strategies import run_rounds

        stages_path = f"{cfg['timings-path']}.stages.json" if cfg["timings-path"] else ""
        exchange = StageTimedSecureExchange(
            timed, RunSettings(min_clients=n, secagg=True).secagg_settings(), min_clients=n, path=stages_path
        )
        run_rounds(
            grid,
            timed,
            exchange,
            initial,
            range(1, num_rounds + 1),
            timeout=float(cfg["round-timeout"]),
            train_config=ConfigRecord(),
            evaluate_config=ConfigRecord(),
        )
    else:
        timed.start(
            grid=grid, initial_arrays=initial, num_rounds=num_rounds, timeout=float(cfg["round-timeout"])
        )
    timed.write(done=True)
