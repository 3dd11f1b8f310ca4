"""The large-model measurement of ``bench/large_model.py`` on stock Flower 1.42.

One ``flower-superlink --insecure --disable-runtime-dependency-installation`` and N
``flower-supernode --insecure`` processes (default isolation ``subprocess``) on loopback run
``bench/flower_large_app`` (plain ``FedAvg.start``, the ClientApp adds a node-specific constant
to each tensor) submitted with ``flwr run``. The process tree Flower builds::

    flower-superlink ── flower-superexec (own session) ── flwr-serverapp   (one per run)
    flower-supernode ── flower-superexec                ── flwr-clientapp   (per run/message)

Measured as on fedge's side: a 1 MB run (1 round) warms every process; then the long-lived
processes' peak RSS (``VmHWM``) is reset through ``/proc/PID/clear_refs`` and the large run is
measured. Long-lived processes (SuperLink, SuperNodes, their SuperExecs): peak minus RSS right
before the large run. Per-run processes (``flwr-serverapp``, ``flwr-clientapp``): peak minus the
largest peak of the same kind in the warm-up run (imports and runtime do not count as model
copies). Peaks are sampled every 50 ms, so a per-run process whose peak comes in its last
50 ms may be under-counted. A watchdog tears the deployment down when ``MemAvailable`` drops
below the floor.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from bench.large_model import MB, Polling, _status, expected_step, reset_peak
from bench.stock_flower import (
    BIN,
    StockFlowerError,
    _Deployment,
    _flwr,
    _json_from,
    _run_log,
    _run_status,
    _tail,
    _wait_port,
    free_ports,
)

APP_DIR = Path(__file__).resolve().parent / "flower_large_app"
CONNECTION = "bench"
KINDS = ("flwr-serverapp", "flwr-clientapp", "flower-superexec", "flower-superlink", "flower-supernode")


def kind_of(pid: int) -> str:
    """Which Flower component ``pid`` runs (from its command line), or ``other``."""
    try:
        cmd = " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return "gone"
    for kind in KINDS:  # per-run kinds first: their command lines name no other kind
        if kind in cmd:
            return kind
    return "other"


@dataclass
class TreeSampler(Polling):
    """Polls VmHWM of every process under the given roots; trips a watchdog on low memory."""

    roots: dict[str, int]  # label -> pid of SuperLink / each SuperNode
    floor: int
    on_trip: Any = None
    peaks: dict[int, int] = field(default_factory=dict)
    seen: dict[int, tuple[str, str]] = field(default_factory=dict)  # pid -> (owner label, kind)
    parent: dict[int, int] = field(default_factory=dict)
    total_peak: int = 0
    tripped: str = ""
    _stop: threading.Event = field(default_factory=threading.Event)

    def poll(self) -> None:
        total = 0
        for label, root in self.roots.items():
            try:
                family = [root, *(p.pid for p in psutil.Process(root).children(recursive=True))]
            except psutil.Error:
                family = []
            for pid in family:
                if pid not in self.seen:
                    try:  # right after fork, before exec, a child shows its parent's command line
                        proc = psutil.Process(pid)
                        if time.time() - proc.create_time() < 0.5:
                            continue
                        self.parent[pid] = proc.ppid()
                    except psutil.Error:
                        continue
                    kind = kind_of(pid)
                    if kind == "gone":  # exited or a zombie (SuperExec never reaps its apps)
                        continue
                    self.seen[pid] = (label, kind)
                st = _status(pid)
                if "VmHWM" in st:
                    self.peaks[pid] = max(self.peaks.get(pid, 0), st["VmHWM"])
                    total += st.get("VmRSS", 0)
        self.total_peak = max(self.total_peak, total)


def _submit(home: Path, model_mb: float, nodes: int, rounds: int, tensors: int, result: Path) -> str:
    result.unlink(missing_ok=True)
    config = {
        "num-server-rounds": rounds,
        "min-clients": nodes,
        "model-mb": float(model_mb),
        "tensors": tensors,
        "result-path": str(result),
    }
    run_config = " ".join(f"{k}={json.dumps(v)}" for k, v in config.items())
    out = _json_from(
        _flwr(["run", str(APP_DIR), CONNECTION, "--format", "json", "--run-config", run_config], home, 120)
    )
    run_id = str(out.get("run-id"))
    if not out.get("success") or run_id == "None":
        raise StockFlowerError(f"flwr run did not start a run: {out}")
    return run_id


def _wait_result(
    dep: _Deployment, home: Path, run_id: str, result: Path, sampler: TreeSampler, timeout_s: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    next_status = time.monotonic() + 30
    while not result.exists():
        if sampler.tripped:
            raise StockFlowerError(f"stopped by the memory watchdog: {sampler.tripped}")
        for proc in dep.procs:
            if proc.poll() is not None:
                name = " ".join(str(a) for a in proc.args[:1])  # type: ignore[index]
                raise StockFlowerError(f"{name} exited with {proc.returncode}")
        now = time.monotonic()
        if now > deadline:
            raise StockFlowerError(f"run {run_id} not done after {timeout_s:.0f}s")
        if now > next_status:
            next_status = now + 30
            status = _run_status(run_id, home)
            if status.startswith("finished") and not result.exists():
                raise StockFlowerError(f"run {run_id} ended as {status}:\n{_run_log(run_id, home)}")
        time.sleep(0.2)
    parsed: dict[str, Any] = json.loads(result.read_text())
    return parsed


def _wait_per_run_exit(roots: list[int], timeout_s: float = 60.0) -> None:
    """Wait until the previous run's ServerApp/ClientApp processes are gone."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = []
        for root in roots:
            with contextlib.suppress(psutil.Error):
                alive += [
                    p.pid
                    for p in psutil.Process(root).children(recursive=True)
                    if kind_of(p.pid) in ("flwr-serverapp", "flwr-clientapp")
                ]
        if not alive:
            return
        time.sleep(0.5)


def measure_flower(
    work: Path,
    model_mb: float,
    nodes: int = 3,
    rounds: int = 2,
    tensors: int = 8,
    floor_gb: float = 3.0,
    timeout_s: float = 3600.0,
) -> dict[str, Any]:
    """Run the large-model app on stock Flower in ``work``; per-process growth and the run's figures."""
    work = work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    model = int(model_mb * MB) // 4 * 4
    dep = _Deployment(work)
    try:
        link_port, *node_ports = free_ports(1 + nodes)
        link, link_log = dep.spawn(
            "superlink",
            [
                str(BIN / "flower-superlink"), "--insecure", "--disable-runtime-dependency-installation",
                "--host", "127.0.0.1", "--port", str(link_port),
            ],
            work / "home-superlink",
        )  # fmt: skip
        _wait_port(link_port, link, link_log, timeout_s=60)
        supernodes = []
        for i, port in enumerate(node_ports):
            proc, log = dep.spawn(
                f"supernode-{i}",
                [
                    str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{link_port}",
                    "--host", "127.0.0.1", "--port", str(port),
                ],
                work / f"home-supernode-{i}",
            )  # fmt: skip
            supernodes.append(proc)
            _wait_port(port, proc, log, timeout_s=60)
        home = work / "home-cli"
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{link_port}"\ninsecure = true\n'
        )
        roots = {"superlink": link.pid, **{f"supernode-{i}": p.pid for i, p in enumerate(supernodes)}}
        floor = int(floor_gb * 2**30)

        # Warm-up: 1 MB, 1 round, same app.
        warm = TreeSampler(roots, floor, on_trip=dep.close)
        warm.start()
        try:
            run_id = _submit(home, 1.0, nodes, 1, tensors, work / "warm.json")
            _wait_result(dep, home, run_id, work / "warm.json", warm, 600)
            _wait_per_run_exit(list(roots.values()))
        finally:
            warm.stop()
        warm_kind_peak: dict[str, int] = {}
        for pid, (_, kind) in warm.seen.items():
            warm_kind_peak[kind] = max(warm_kind_peak.get(kind, 0), warm.peaks.get(pid, 0))

        # The large run: reset the long-lived processes' peaks first.
        long_lived = [pid for pid in warm.seen if psutil.pid_exists(pid) and kind_of(pid) in KINDS[2:]]
        base = {pid: reset_peak(pid) for pid in long_lived}
        sampler = TreeSampler(roots, floor, on_trip=dep.close)
        sampler.start()
        result = work / "result.json"
        started = time.perf_counter()
        try:
            run_id = _submit(home, model_mb, nodes, rounds, tensors, result)
            figures = _wait_result(dep, home, run_id, result, sampler, timeout_s)
            run_s = time.perf_counter() - started
            _wait_per_run_exit(list(roots.values()))
        except (StockFlowerError, subprocess.TimeoutExpired) as exc:
            sampler.stop()
            logs = "\n".join(f"--- {log.name}\n{_tail(log, 15)}" for log in sorted(dep.logs.glob("*.log")))
            raise StockFlowerError(f"{exc}\n{logs}") from exc
        finally:
            sampler.stop()
    finally:
        dep.close()

    processes = []
    for pid, (owner, kind) in sorted(sampler.seen.items(), key=lambda kv: (kv[1][0], kv[1][1], kv[0])):
        if pid not in sampler.peaks:
            continue
        if pid in base:
            baseline, against = base[pid], "RSS before the run"
        else:
            baseline, against = warm_kind_peak.get(kind, 0), f"warm-up {kind} peak"
        grown = sampler.peaks.get(pid, 0) - baseline
        processes.append(
            {
                "pid": pid,
                "ppid": sampler.parent.get(pid),
                "owner": owner,
                "kind": kind,
                "peak_mb": sampler.peaks.get(pid, 0) / MB,
                "growth_mb": grown / MB,
                "x_model": grown / model,
                "baseline": against,
            }
        )
    node_ids = [int(n) for n in figures["node_ids"]]
    expected = rounds * expected_step(node_ids)
    finals = list(figures["final"].values())
    uniform = all(f["first"] == f["min"] == f["max"] for f in finals)
    err = max(max(abs(f["min"] - expected), abs(f["max"] - expected)) for f in finals)
    return {
        "engine": "flower",
        "flwr": _flower_version(),
        "model_mb": model / MB,
        "daemons": nodes,
        "rounds": rounds,
        "processes": processes,
        "total_rss_peak_mb": sampler.total_peak / MB,
        "run_s": run_s,
        "round_s": figures["round_s"],
        "expected": expected,
        "final": figures["final"],
        # float32 arithmetic: "exact" = every element equal and within float32 rounding.
        "uniform": uniform,
        "max_abs_err": err,
        "exact": bool(uniform and err <= 4 * float(np.finfo(np.float32).eps) * expected),
    }


def _flower_version() -> str:
    import flwr

    return str(flwr.__version__)
