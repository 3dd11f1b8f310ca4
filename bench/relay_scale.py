"""Flat vs relays: the server's CPU and bytes per round, same devices, same model, same run.

    python bench/relay_scale.py [--relays 4] [--per-relay 4] [--rounds 5] [--model NAME]

One mTLS server (sealing on) runs fedge's ServerApp twice on the same machine, back to back:

- **flat**: ``relays × per-relay`` real daemons connected to the server;
- **relays**: the same daemons (same names, certificates, node config) under ``relays`` real
  ``fedge relay`` processes, ``per-relay`` daemons each.

The daemons run ``bench/relay_echo.py`` (answers like a device without training, no torch), so a
round costs what the federation costs: transport, sealing, screening, aggregation. Measured per
round, in steady state (between the first and the last ``round-finished`` event, so the run
worker's start and the final export are left out):

- server CPU: user+system seconds of the server process and its run worker (psutil);
- server bytes: the server's own Fleet counters (``fedge_server_fleet_{sent,received}_bytes``, its
  Prometheus endpoint), i.e. what crossed the server's device streams;
- round wall time; and, for the relay run, the relays' CPU (the work that moved to them).

The flat run is the baseline of the same invocation; the ratio is relays / flat.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fedge.sim.local import LocalFederation  # noqa: E402

APP = "fedge.server.app:app"
ECHO = ["--client-app", "bench.relay_echo:app", "--app-dir", str(REPO)]


def _cpu(procs: list[psutil.Process]) -> float:
    """User+system CPU seconds of ``procs`` and their live descendants."""
    total = 0.0
    for proc in procs:
        for p in [proc, *proc.children(recursive=True)]:
            try:
                times = p.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
    return total


def _bytes(metrics_address: str) -> float:
    """Bytes the server's Fleet streams sent plus received so far (its Prometheus counters)."""
    text = urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=10).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(
            ("fedge_server_fleet_sent_bytes_total", "fedge_server_fleet_received_bytes_total")
        ):
            total += float(line.split()[-1])
    return total


def _run(fed: LocalFederation, config: dict[str, Any], relays: list[psutil.Process]) -> dict[str, float]:
    """Start a run, snapshot at each round-finished, return steady-state per-round figures."""
    assert fed.server is not None
    server = psutil.Process(fed.server.pid)
    metrics = (fed.workdir / "server" / "metrics_address").read_text().strip()
    client = fed.control()
    run_id = client.start_run(APP, config, str(REPO)).run_id
    marks: list[tuple[float, float, float, float]] = []
    for event in client.events(run_id):
        if event.kind == "round-finished" and json.loads(event.data_json or "{}").get("round", 0) >= 1:
            marks.append((time.perf_counter(), _cpu([server]), _bytes(metrics), _cpu(relays)))
        if event.kind in ("run-failed", "run-stopped"):
            raise SystemExit(f"run {run_id} ended {event.kind}: {event.data_json}")
    client.close()
    (t0, c0, b0, r0), (t1, c1, b1, r1) = marks[0], marks[-1]
    n = len(marks) - 1
    return {
        "rounds": n,
        "wall": (t1 - t0) / n,
        "cpu": (c1 - c0) / n,
        "bytes": (b1 - b0) / n,
        "relay_cpu": (r1 - r0) / n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--relays", type=int, default=4)
    parser.add_argument("--per-relay", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5, help="measured: rounds 2..N")
    parser.add_argument("--model", default="mobilenet_v3_small", help='"" for the digits CNN')
    args = parser.parse_args()
    devices = args.relays * args.per_relay
    config: dict[str, Any] = {
        "task": "digits",
        "num-server-rounds": args.rounds,
        "central-eval": False,
        "export": "off",
        "round-timeout": 300.0,
    }
    if args.model:
        config["model"] = args.model
    console = Console()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="fedge-relay-bench-") as tmp, LocalFederation(Path(tmp)) as fed:
        fed.start_server(["--metrics-address", "127.0.0.1:0"])
        console.print(f"flat: {devices} daemons → server")
        for i in range(devices):
            fed.start_daemon(f"edge-{i}", ECHO)
        fed.wait_for_nodes(devices, timeout=300)
        results["flat"] = _run(fed, {**config, "min-clients": devices}, [])
        fed.stop_daemons()

        console.print(f"relays: {args.relays} relays × {args.per_relay} daemons → server")
        relays = []
        for r in range(args.relays):
            name = f"relay-{r}"
            proc, address = fed.start_relay(name, ["--min-devices", str(args.per_relay)])
            relays.append(psutil.Process(proc.pid))
            for i in range(r * args.per_relay, (r + 1) * args.per_relay):
                fed.start_daemon(f"edge-{i}", [*ECHO, "--server-name", name], server=address)
        fed.wait_for_nodes(args.relays, timeout=300)
        results["relays"] = _run(fed, {**config, "min-clients": args.relays}, relays)

    flat, tree = results["flat"], results["relays"]
    table = Table(
        title=f"{devices} devices, {config.get('model', 'digits CNN')}, per round (rounds 2..{args.rounds})"
    )
    for column in ("", "flat (baseline)", f"{args.relays} relays", "relays / flat"):
        table.add_column(column, justify="right")
    table.add_row(
        "server CPU s", f"{flat['cpu']:.3f}", f"{tree['cpu']:.3f}", f"{tree['cpu'] / flat['cpu']:.2f}"
    )
    table.add_row(
        "server bytes MB",
        f"{flat['bytes'] / 1e6:.2f}",
        f"{tree['bytes'] / 1e6:.2f}",
        f"{tree['bytes'] / flat['bytes']:.2f}",
    )
    table.add_row(
        "round wall s", f"{flat['wall']:.3f}", f"{tree['wall']:.3f}", f"{tree['wall'] / flat['wall']:.2f}"
    )
    table.add_row("relays' CPU s", "-", f"{tree['relay_cpu']:.3f}", "")
    console.print(table)
    print(json.dumps({"devices": devices, **{k: v for k, v in results.items()}}))


if __name__ == "__main__":
    main()
