"""An uneven edge fleet: wall-clock time and uplink bytes to a target accuracy, sync FedAvg vs async FedBuff.

Ten real daemons on digits (mTLS, sealed updates) behind one real server, started once and shared
by every mode so that the modes meet the same fleet: three daemons run ten times slower
(``--node-config slowdown=10``, :mod:`fedge.client.slowdown`) and two reach the server through a
throttled link (fedge's user-space impairment proxy, :mod:`fedge.sim.impair`: ``rate=1mbit
delay=50ms`` each way; this machine has no ``sch_netem``). Each mode is one run; the bench
follows its events and, at the first model whose central accuracy reaches the target, takes

- **time to target**: the run's own clock (``metrics.jsonl`` ``seconds``) from the initial model's
  evaluation, when the first instructions go out, to that model (a fresh run worker's start-up
  and first evaluation, seconds on a loaded machine, are left out for every mode alike),
- **uplink bytes to target**: the server's ``fedge_server_fleet_received_bytes_total`` counter
  (Prometheus endpoint) then, minus its value when the run started,

then stops the run. Ratios are against sync FedAvg measured in the same invocation, after one
unmeasured warm-up round that every daemon trains in.

Modes live in :data:`MODES` (name → run-config overlay): sync FedAvg, async FedBuff, and async
with int8-compressed updates (``--modes`` picks which rows run).

    python -m bench.edge_fleet                 # all modes
    python -m bench.edge_fleet --modes sync,async --target 0.9
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from fedge.client.data import write_partitions
from fedge.server.control_client import ControlClient
from fedge.sim.impair import Impairment, ProxyThread
from fedge.sim.local import LocalFederation
from fedge.tasks import load_task

REPO = Path(__file__).resolve().parent.parent
APP = "fedge.server.app:app"
DAEMONS = 10
SLOW = (7, 8, 9)  # daemons ten times slower
THROTTLED = (5, 6)  # daemons behind a 1 Mbit/s, 50 ms link
LINK = Impairment(rate=1e6, delay=0.05)

BASE: dict[str, Any] = {
    "task": "digits",
    "partition": "iid",
    "min-clients": DAEMONS,
    "local-epochs": 1,
    "seed": 0,
    "export": "off",
    # Both modes are judged by central evaluation only: a sync round would otherwise also wait for
    # every device's federated evaluation, which async runs do not do.
    "fraction-evaluate": 0.0,
}
SYNC: dict[str, Any] = {**BASE, "num-server-rounds": 15}
# buffer 5: the automatic default for 10 devices (half of min-clients).
ASYNC: dict[str, Any] = {**BASE, "mode": "async", "buffer": 5, "max-staleness": 4, "num-server-rounds": 80}
WARM_UP: dict[str, Any] = {**BASE, "num-server-rounds": 1, "central-eval": False}
#: name -> run config. Add "async+int8": {**ASYNC, "compress": "int8"} once --compress lands.
MODES: dict[str, dict[str, Any]] = {"sync": SYNC, "async": ASYNC, "async+int8": {**ASYNC, "compress": "int8"}}


def received_bytes(state_dir: Path) -> float:
    """The server's uplink byte counter (every frame the Fleet service received)."""
    address = (state_dir / "metrics_address").read_text().strip()
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith("fedge_server_fleet_received_bytes_total "):
            return float(line.split()[1])
    raise RuntimeError("fedge_server_fleet_received_bytes_total not exposed")


def run_to_target(
    client: ControlClient, state_dir: Path, config: dict[str, Any], target: float
) -> dict[str, Any]:
    """One run of ``config`` until a model reaches ``target`` central accuracy (then stopped)."""
    before = received_bytes(state_dir)
    started = time.perf_counter()
    run_id = client.start_run(APP, config, str(REPO)).run_id
    result: dict[str, Any] = {"reached": False}
    start = 0.0
    for event in client.events(run_id):
        data = json.loads(event.data_json or "{}")
        if event.kind == "round-finished":
            metrics = data.get("metrics", {})
            accuracy = float(metrics.get("central-accuracy", 0.0))
            seconds = float(metrics.get("seconds", 0))
            if data["round"] == 0:  # the initial model is evaluated: training starts now
                start = seconds
            result.update(models=data["round"], accuracy=accuracy, seconds=seconds - start)
            if accuracy >= target:
                result.update(reached=True, uplink_bytes=received_bytes(state_dir) - before)
                client.stop_run(run_id)
                break
        elif event.kind in ("run-finished", "run-failed", "run-stopped"):
            result["end"] = f"{event.kind} {data.get('error', '')}".strip()
            break
    result["wall_s"] = time.perf_counter() - started
    # The stopped run's worker and daemons settle before the next mode starts.
    for _ in client.events(run_id):
        pass
    time.sleep(2.0)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {list(MODES)}")
    parser.add_argument("--target", type=float, default=0.90, help="central accuracy to reach")
    parser.add_argument("--buffer", type=int, default=ASYNC["buffer"], help="async: updates per version")
    parser.add_argument("--max-staleness", type=int, default=ASYNC["max-staleness"], help="async: S")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    for config in MODES.values():
        if config.get("mode") == "async":
            config.update({"buffer": args.buffer, "max-staleness": args.max_staleness})
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}; known: {list(MODES)}")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="fedge-edge-fleet-")).resolve()
    results: dict[str, dict[str, Any]] = {}
    with ProxyThread() as proxies, LocalFederation(work) as fed:
        fed.start_server(["--metrics-address", "127.0.0.1:0"])
        host, port = fed.address.rsplit(":", 1)
        paths = write_partitions(
            load_task("digits"), DAEMONS, "iid", 0, [work / f"edge-{i}" for i in range(DAEMONS)]
        )
        for i, path in enumerate(paths):
            extra = ["--data", str(path)]
            if i in SLOW:
                extra += ["--node-config", "slowdown=10"]
            if i in THROTTLED:
                address, _ = proxies.add(("127.0.0.1", 0), (host, int(port)), LINK, seed=i)
                fed.start_daemon(f"edge-{i}", [*extra, "--server-name", "localhost"], server=address)
            else:
                fed.start_daemon(f"edge-{i}", extra)
        fed.wait_for_nodes(DAEMONS)
        client = fed.control()
        # Unmeasured: every daemon's first training carries its warm-up (imports, first kernels,
        # ten processes starting at once), which would otherwise land on whichever mode runs first.
        print("warm-up", json.dumps(run_to_target(client, work / "server", WARM_UP, 2.0)), flush=True)
        for mode in modes:
            results[mode] = run_to_target(client, work / "server", MODES[mode], args.target)
            print(mode, json.dumps(results[mode]), flush=True)
        client.close()
    print(
        f"\n10 digits daemons: 3 × slowdown 10, 2 behind rate=1mbit delay=50ms; target {args.target}; "
        f"async buffer {args.buffer}, max-staleness {args.max_staleness}"
    )
    print(f"{'mode':<12}{'reached':>8}{'models':>8}{'time s':>9}{'uplink MB':>11}{'vs sync':>9}")
    base = results.get("sync", {})
    for mode, r in results.items():
        ratio = base["seconds"] / r["seconds"] if r.get("reached") and base.get("reached") else float("nan")
        uplink = r.get("uplink_bytes", float("nan")) / 1e6
        print(
            f"{mode:<12}{r['reached']!s:>8}{r.get('models', 0):>8}{r.get('seconds', 0):>9.1f}"
            f"{uplink:>11.2f}{ratio:>8.2f}x"
        )


if __name__ == "__main__":
    main()
