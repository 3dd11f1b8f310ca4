"""Scale: Flower's Ray engine with 1000 clients, 32 real daemons, round time under netem.

    python bench/scale.py [--ray-clients 1000] [--daemons 32] [--rounds 2] [--only ray,daemons,netem]

- **ray**: ``fedge simulate --engine ray --clients N --rounds R`` — wall time and peak memory of
  the whole process tree (driver, Ray's GCS/raylet and workers), against a 100-client baseline
  run in the same invocation (ratio of wall time per client).
- **daemons**: N real ``fedge client`` daemons (mTLS) behind one server — wall per round and each
  daemon's memory when idle (connected, torch loaded, before the run) and after the run; RSS
  counts the shared torch/numpy pages in every process, USS only the daemon's own. Goal: ≤150 MB
  RSS idle per daemon. Baseline: a 3-daemon federation's round time.
- **netem** (root only): 3 daemons × R+1 rounds with no impairment, ``delay=100ms``, and the
  issue's profile ``delay=100ms jitter=20ms loss=2% rate=1mbit``; steady-state round time
  (rounds 2..) and its ratio to the unimpaired baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fedge.sim.local import LocalFederation  # noqa: E402

GOAL_RSS_MB = 150.0
MB = 2**20
console = Console(width=140)


def _fedge(*args: str, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    return subprocess.run(
        [sys.executable, "-m", "fedge", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=REPO,
    )


class TreeMemory:
    """Samples the summed RSS of a process and all its descendants; keeps the peak."""

    def __init__(self, pid: int, every: float = 0.5) -> None:
        self.root, self.every = psutil.Process(pid), every
        self.peak_total = self.peak_root = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            total = 0
            for p in procs:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak_total = max(self.peak_total, total)
            try:
                self.peak_root = max(self.peak_root, self.root.memory_info().rss)
            except psutil.Error:
                pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def ray_run(clients: int, rounds: int, work: Path) -> dict[str, Any]:
    """One ``fedge simulate --engine ray`` run: wall, peak tree/driver RSS, per-round seconds."""
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    args = ["simulate", "--engine", "ray", "--clients", str(clients), "--rounds", str(rounds)]
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedge", *args, "--workdir", str(work)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=REPO,
    )  # fmt: skip
    memory = TreeMemory(proc.pid)
    out, _ = proc.communicate(timeout=7200)
    wall = time.perf_counter() - started
    memory.stop()
    if proc.returncode != 0:
        raise SystemExit(f"ray run with {clients} clients failed:\n{out.decode()[-3000:]}")
    rows = _metrics(work / "run" / "metrics.jsonl")
    assert all(r.get("train-replies") == clients for r in rows[1:]), rows
    return {
        "clients": clients,
        "wall_s": wall,
        "peak_tree_mb": memory.peak_total / MB,
        "peak_driver_mb": memory.peak_root / MB,
        "round_s": [round(r["round-seconds"], 2) for r in rows],
        "accuracy": rows[-1].get("central-accuracy"),
    }


def bench_ray(clients: int, rounds: int, work: Path) -> None:
    base = ray_run(100, rounds, work / "ray-100")
    big = ray_run(clients, rounds, work / f"ray-{clients}")
    table = Table("ray clients", "wall s", "peak tree MB", "peak driver MB", "round s (0..R)", "accuracy")
    for r in (base, big):
        table.add_row(
            str(r["clients"]), f"{r['wall_s']:.1f}", f"{r['peak_tree_mb']:.0f}", f"{r['peak_driver_mb']:.0f}",
            str(r["round_s"]), f"{r['accuracy']:.3f}",
        )  # fmt: skip
    console.print(table)
    per_client = (big["wall_s"] / big["clients"]) / (base["wall_s"] / base["clients"])
    console.print(
        f"ray: {clients} clients × {rounds} rounds in {big['wall_s']:.1f} s, "
        f"peak {big['peak_tree_mb']:.0f} MB (whole tree); wall per client vs 100 clients: ×{per_client:.2f}"
    )


def _daemon_memory(fed: LocalFederation) -> tuple[list[float], list[float]]:
    rss, uss = [], []
    for p in fed.daemons:
        info = psutil.Process(p.pid).memory_full_info()
        rss.append(info.rss / MB)
        uss.append(info.uss / MB)
    return rss, uss


def daemons_run(count: int, rounds: int, work: Path, measure: bool) -> dict[str, Any]:
    """``count`` real daemons, one run of ``rounds`` rounds; memory idle before and after."""
    out: dict[str, Any] = {"daemons": count}
    started = time.perf_counter()
    with LocalFederation(work) as fed:
        address = fed.start_server()
        for i in range(count):
            node = ["--node-config", f"partition-id={i}", "--node-config", f"num-partitions={count}"]
            fed.start_daemon(f"edge-{i}", node)
        fed.wait_for_nodes(count, timeout=600)
        out["startup_s"] = time.perf_counter() - started
        if measure:
            time.sleep(3)  # let start-up allocations settle: "idle" is a connected, waiting daemon
            out["idle_rss"], out["idle_uss"] = _daemon_memory(fed)
        run = ["run", "start", "--server", address, *fed.auth, "--rounds", str(rounds)]
        done = _fedge(*run, "--min-clients", str(count), "--set", "export=off")
        if done.returncode != 0:
            raise SystemExit(f"{count}-daemon run failed:\n{done.stderr[-3000:]}")
        if measure:
            time.sleep(3)
            out["after_rss"], out["after_uss"] = _daemon_memory(fed)
    (run_dir,) = (work / "server" / "runs").iterdir()
    rows = _metrics(run_dir / "metrics.jsonl")
    out["round_s"] = [r["round-seconds"] for r in rows[1:]]
    return out


def bench_daemons(count: int, rounds: int, work: Path) -> None:
    base = daemons_run(3, rounds, work / "daemons-3", measure=False)
    big = daemons_run(count, rounds, work / f"daemons-{count}", measure=True)
    table = Table("daemons", "start-up s", "round 1 s", "rounds 2.. s", "ratio vs 3 daemons")
    steady = lambda r: statistics.fmean(r["round_s"][1:] or r["round_s"])  # noqa: E731
    for r in (base, big):
        table.add_row(
            str(r["daemons"]), f"{r['startup_s']:.1f}", f"{r['round_s'][0]:.2f}", f"{steady(r):.2f}",
            f"×{steady(r) / steady(base):.1f}",
        )  # fmt: skip
    console.print(table)
    mem = Table("per daemon MB", "median", "max", "goal")
    for key, label in (("idle_rss", "RSS idle"), ("idle_uss", "USS idle"), ("after_rss", "RSS after run"),
                       ("after_uss", "USS after run")):  # fmt: skip
        values = big[key]
        goal = f"≤{GOAL_RSS_MB:.0f}" if key == "idle_rss" else ""
        table_row = [label, f"{statistics.median(values):.0f}", f"{max(values):.0f}", goal]
        mem.add_row(*table_row)
    console.print(mem)
    verdict = "meets" if max(big["idle_rss"]) <= GOAL_RSS_MB else "misses"
    console.print(
        f"{count} daemons: idle RSS max {max(big['idle_rss']):.0f} MB {verdict} the {GOAL_RSS_MB:.0f} MB goal"
    )


def netem_run(profile: str, rounds: int, work: Path) -> list[float]:
    args = [
        "simulate",
        "--clients",
        "3",
        "--rounds",
        str(rounds),
        "--workdir",
        str(work),
        "--set",
        "export=off",
    ]
    done = _fedge(*args, *(["--netem", profile] if profile else []))
    if done.returncode != 0:
        raise SystemExit(f"netem run {profile!r} failed:\n{done.stderr[-3000:]}")
    (run_dir,) = (work / "server" / "runs").iterdir()
    return [r["round-seconds"] for r in _metrics(run_dir / "metrics.jsonl")[1:]]


def bench_netem(rounds: int, work: Path) -> None:
    if os.geteuid() != 0:
        console.print("netem: skipped (needs root for network namespaces)")
        return
    profiles = ["", "delay=100ms", "delay=100ms jitter=20ms loss=2% rate=1mbit"]
    results = {p: netem_run(p, rounds + 1, work / f"netem-{i}") for i, p in enumerate(profiles)}
    base = statistics.median(results[""][1:])
    table = Table("link (3 daemons, fedavg)", "round 1 s", "rounds 2.. median s", "ratio vs none")
    for p, times in results.items():
        steady = statistics.median(times[1:])
        table.add_row(p or "none", f"{times[0]:.2f}", f"{steady:.3f}", f"×{steady / base:.1f}")
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ray-clients", type=int, default=1000)
    parser.add_argument("--daemons", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", default="ray,daemons,netem")
    parser.add_argument("--workdir", default=str(REPO / "runs" / "scale"))
    args = parser.parse_args()
    work = Path(args.workdir).resolve()
    if work.exists():
        import shutil

        shutil.rmtree(work)
    work.mkdir(parents=True)
    console.print(f"machine: {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB")
    only = set(args.only.split(","))
    if "ray" in only:
        bench_ray(args.ray_clients, args.rounds, work)
    if "daemons" in only:
        bench_daemons(args.daemons, args.rounds, work)
    if "netem" in only:
        bench_netem(args.rounds, work)


if __name__ == "__main__":
    main()
