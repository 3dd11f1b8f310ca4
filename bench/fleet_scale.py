"""Fleet scale: one server process holding 100 … 10,000 device streams, and a round at that scale.

    python bench/fleet_scale.py [--sizes 100,1000,5000,10000] [--before 100,1000 --main-tree DIR]

Per size N (a fresh real ``fedge server`` with mTLS; N virtual devices from bench/fleet_load.py,
each its own certificate, real streams with heartbeats, sealed replies):

- **connect**: seconds from starting the load until all N hold a welcomed stream;
- **RSS / threads**: the server process once all are connected;
- **idle CPU**: the server's CPU seconds per second over ``--idle`` seconds of heartbeats only;
- **round**: wall time of a round with 10% of the devices sampled (``fraction-train``; another
  share with ``--fraction``) and a 115k-parameter model (bench/fleet_task.py), from its
  ``round-started`` to ``round-finished`` events; the second round is reported (the first also
  pays the run's start-up).

``--floor`` also runs bench/grpc_floor.py with each size connected and its sampled count
active (bare ``grpc.aio`` with mTLS, nothing of fedge's) in the same invocation, and prints the
server's CPU per sampled device in round 2 (its idle share taken out) next to that floor.

``--before`` measures the same at the given sizes against another source tree (``--main-tree``,
e.g. ``git archive <commit> | tar -x -C DIR``; the task file is copied into its ``bench/``),
``max-streams`` raised to N. ``--heartbeat S`` gives every server measured the same interval
(by default each uses its own default). Goals (issue 19):
10,000 held with ≤ 2 GB RSS and ≤ 0.5 core idle; a 1,000-device round in ≤ 5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.fleet_load import FleetLoad, raise_nofile  # noqa: E402
from bench.grpc_floor import floor  # noqa: E402
from fedge.errors import FedgeError  # noqa: E402
from fedge.sim.local import LocalFederation  # noqa: E402

MB = 2**20


def measure(
    n: int,
    work: Path,
    processes: int,
    idle: float,
    tree: Path | None,
    heartbeat: float | None,
    fraction: float = 0.1,
) -> dict[str, Any]:
    """One size against one server (this checkout's, or the one in ``tree``)."""
    row: dict[str, Any] = {"devices": n, "server": "before" if tree else "this", "heartbeat_s": heartbeat}
    old_path = os.environ.get("PYTHONPATH")
    if tree is not None:  # the server process (and its run worker) import fedge from there
        os.environ["PYTHONPATH"] = str(tree)
        shutil.copy(REPO / "bench" / "fleet_task.py", tree / "bench" / "fleet_task.py")  # its `bench` wins
    settings = f"[server]\nmax-streams = {n + 16}\nnode-wait-timeout = 600\n"
    if heartbeat is not None:  # else the server's default
        settings += f"heartbeat-interval = {heartbeat}\n"
    (work / "server.toml").write_text(settings)
    try:
        with LocalFederation(work) as fed:
            fed.start_server(["--config", str(work / "server.toml")])
            assert fed.server is not None
            server = psutil.Process(fed.server.pid)
            load = FleetLoad(fed.address, fed.pki_dir, n, processes)
            started = time.monotonic()
            load.start()
            try:
                load.wait_connected(1, timeout=120.0)
                first = time.monotonic()
                load.wait_connected(n, timeout=max(120.0, n / 20))
                # From starting the load (certificates, worker start-up) and from the first Welcome.
                row["connect_s"] = round(time.monotonic() - started, 2)
                row["first_to_all_s"] = round(time.monotonic() - first, 2)
            except RuntimeError as exc:
                row["error"] = str(exc)
                row["connected"] = load.connected
                load.stop()
                return row
            try:
                try:
                    fed.wait_for_nodes(n, timeout=60)
                except FedgeError as exc:  # the load saw them all welcomed, the server lost some since
                    row["error"] = exc.message
                    return row
                time.sleep(2.0)  # let the connect storm settle
                before = server.cpu_times()
                time.sleep(idle)
                after = server.cpu_times()
                cpu = (after.user + after.system - before.user - before.system) / idle
                row["idle_cpu_cores"] = round(cpu, 3)
                row["rss_mb"] = round(server.memory_info().rss / MB, 1)
                row["threads"] = server.num_threads()
                row.update(_round(fed, n, server, load, fraction))
                if "round2_cpu_s" in row:
                    idle_share = row["idle_cpu_cores"] * row["round2_s"]
                    per_device = (row["round2_cpu_s"]["server"] - idle_share) / row["sampled"]
                    row["server_ms_per_sampled"] = round(1000 * per_device, 2)
                row["still_connected"] = load.connected
            finally:
                load.stop()
    finally:
        if tree is not None:
            if old_path is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = old_path
    return row


def _round(
    fed: LocalFederation, n: int, server: psutil.Process, load: FleetLoad, fraction: float
) -> dict[str, Any]:
    sampled = max(1, int(n * fraction))
    config = {
        "task": "bench.fleet_task:TASK",
        "num-server-rounds": 2,
        "fraction-train": fraction,
        "fraction-evaluate": 0.0,
        "min-clients": sampled,
        "central-eval": False,
        "round-timeout": 300.0,
    }
    devices = [psutil.Process(pid) for pid in load.pids()]
    marks: dict[str, dict[str, float]] = {}  # CPU seconds by process group at each round event
    client = fed.control()
    try:
        run = client.start_run("fedge.server.app:app", config, str(REPO))
        events = []
        for event in client.events(run.run_id):
            events.append(event)
            if event.kind in ("round-started", "round-finished"):
                marks[f"{event.kind}{json.loads(event.data_json).get('round')}"] = {
                    "server": _cpu([server]),
                    "worker": _cpu(server.children(recursive=True)),
                    "devices": _cpu(devices),
                }
    finally:
        client.close()
    if events[-1].kind != "run-finished":
        return {"round_error": f"{events[-1].kind}: {events[-1].data_json[:300]}"}
    starts = {json.loads(e.data_json).get("round"): e.at for e in events if e.kind == "round-started"}
    ends = {json.loads(e.data_json).get("round"): e.at for e in events if e.kind == "round-finished"}
    rows = [json.loads(line) for line in (Path(run.run_dir) / "metrics.jsonl").read_text().splitlines()]
    begin, end = marks["round-started2"], marks["round-finished2"]
    return {
        "sampled": sampled,
        "round1_s": round(ends[1] - starts[1], 2),
        "round2_s": round(ends[2] - starts[2], 2),
        # CPU seconds of round 2 (the run worker is the server's child; devices: the load generators).
        "round2_cpu_s": {k: round(end[k] - begin[k], 2) for k in end},
        "train_replies": [r.get("train-replies") for r in rows[1:]],
    }


def _cpu(processes: list[psutil.Process]) -> float:
    total = 0.0
    for proc in processes:
        try:
            times = proc.cpu_times()
        except psutil.Error:  # ended meanwhile
            continue
        total += times.user + times.system
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,5000,10000")
    parser.add_argument("--before", default="", help="sizes to measure against --main-tree too")
    parser.add_argument("--main-tree", type=Path, help="a source tree of main (git archive main | tar -x)")
    parser.add_argument("--processes", type=int, default=3, help="load-generator processes")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle CPU measured")
    parser.add_argument("--fraction", type=float, default=0.1, help="share of the devices sampled per round")
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also measure bare grpc.aio: each size connected, its sampled count active",
    )
    parser.add_argument(
        "--heartbeat", type=float, help="heartbeat-interval of every server measured (default: each its own)"
    )
    args = parser.parse_args()
    raise_nofile()
    plan: list[tuple[int, Path | None]] = []
    if args.before:
        if args.main_tree is None:
            parser.error("--before needs --main-tree")
        plan += [(int(n), args.main_tree.resolve()) for n in args.before.split(",")]
    plan += [(int(n), None) for n in args.sizes.split(",")]
    for n, tree in plan:
        with tempfile.TemporaryDirectory(prefix="fleet-scale-") as tmp:
            row = measure(n, Path(tmp), args.processes, args.idle, tree, args.heartbeat, args.fraction)
        print(json.dumps(row), flush=True)
        if args.floor and tree is None and "server_ms_per_sampled" in row:
            bare = floor(n, processes=args.processes, active=row["sampled"])
            print(json.dumps({"floor": bare}), flush=True)


if __name__ == "__main__":
    main()
