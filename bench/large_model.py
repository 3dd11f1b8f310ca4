"""A large model through the real deployment path: per-process peak memory, round time, bytes.

    python -m bench.large_model [--model-mb 2600] [--daemons 3] [--rounds 2] [--tensors 40]
                                [--floor-gb 3] [--insecure] [--engine fedge|flower]

``--engine flower`` runs the same model and measurement on stock Flower 1.42 (SuperLink,
SuperNodes, ``flwr run``): see :mod:`bench.flower_large`.

One real ``fedge server`` (mTLS, sealed replies: the default) and N real ``fedge client``
daemons on loopback (:class:`fedge.sim.local.LocalFederation`) run ``bench/large_app.py``:
Flower's FedAvg on fedge's round loop with streaming aggregation, a float32 model of
``model-mb`` MB. First a 1 MB run of the same app warms every process; then each process's
peak RSS (``VmHWM``) is reset (``/proc/PID/clear_refs``) and the large run is measured:

* server process, each daemon: peak RSS minus RSS right before the large run;
* run worker (a fresh process per run): its peak minus the peak of the warm-up run's worker
  (same code, a 1 MB model), so imports do not count as model copies;

each also as a multiple of the model. Plus wall time per round (from the app), and the bytes
the server's Fleet streams sent and received (its Prometheus counters).

A watchdog stops the federation (and the run fails) when the machine's ``MemAvailable`` drops
below ``--floor-gb``: other work shares the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from fedge.sim.local import LocalFederation

REPO = Path(__file__).resolve().parent.parent
APP = "bench.large_app"
MB = 1_000_000


def expected_step(node_ids: list[int]) -> float:
    """What one round adds to every weight: ``Σ n² / Σ n`` with ``n`` each node's offset and weight."""
    offsets = [node % 1000 + 1 for node in node_ids]
    return sum(n * n for n in offsets) / sum(offsets)


def mem_available() -> int:
    """The machine's ``MemAvailable`` in bytes."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def _status(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def reset_peak(pid: int) -> int:
    """Reset ``VmHWM`` of ``pid`` to its current RSS (Linux >= 4.0); returns that RSS."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _status(pid).get("VmRSS", 0)


class Polling:
    """A sampler's thread: ``poll()`` every 50 ms, and a watchdog on the machine's free memory.

    Subclasses (dataclasses) have ``floor`` (bytes of ``MemAvailable`` below which the run is
    stopped), ``tripped`` (why it was, or ""), ``on_trip`` and ``_stop`` (a ``threading.Event``).
    """

    floor: int
    tripped: str
    on_trip: Any
    _stop: threading.Event

    def start(self) -> None:
        threading.Thread(target=self._loop, daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        time.sleep(0.1)

    def poll(self) -> None:
        raise NotImplementedError

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.poll()
            available = mem_available()
            if available < self.floor and not self.tripped:
                self.tripped = (
                    f"MemAvailable {available / 2**30:.1f} GiB < floor {self.floor / 2**30:.1f} GiB"
                )
                if self.on_trip is not None:
                    self.on_trip()
            time.sleep(0.05)


@dataclass
class Sampler(Polling):
    """Polls the peak RSS of the server, its children (run workers) and the daemons."""

    server: int
    daemons: list[int]
    floor: int
    peaks: dict[int, int] = field(default_factory=dict)
    workers: list[int] = field(default_factory=list)
    tripped: str = ""
    on_trip: Any = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def poll(self) -> None:
        try:
            kids = [p.pid for p in psutil.Process(self.server).children(recursive=True)]
        except psutil.Error:
            kids = []
        for pid in kids:
            if pid not in self.workers:
                self.workers.append(pid)
        for pid in [self.server, *self.daemons, *kids]:
            hwm = _status(pid).get("VmHWM")
            if hwm is not None:
                self.peaks[pid] = max(self.peaks.get(pid, 0), hwm)


def _run(fed: LocalFederation, work: Path, model_mb: float, daemons: int, rounds: int, tensors: int) -> dict:
    result = work / f"result-{model_mb:g}.json"
    result.unlink(missing_ok=True)
    started = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable, "-m", "fedge", "run", "start", "--server", fed.address, *fed.auth,
            "--server-app", f"{APP}:server_app", "--app-dir", str(REPO), "--rounds", str(rounds),
            "--min-clients", str(daemons), "--set", f"model-mb={model_mb}", "--set", f"tensors={tensors}",
            "--set", f"result-path={result}",
        ],
        capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    wall = time.perf_counter() - started
    if done.returncode != 0 or not result.exists():
        raise RuntimeError(f"the run failed:\n{done.stderr[-3000:]}")
    return {"run_s": wall, **json.loads(result.read_text())}


def _fleet_bytes(state: Path) -> dict[str, float]:
    address = (state / "metrics_address").read_text().strip()
    text = urllib.request.urlopen(f"http://{address}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        for key in ("fedge_server_fleet_sent_bytes_total", "fedge_server_fleet_received_bytes_total"):
            if line.startswith(key + " "):
                out[key.removeprefix("fedge_server_fleet_").removesuffix("_total")] = float(line.split()[1])
    return out


def measure(
    work: Path,
    model_mb: float,
    daemons: int = 3,
    rounds: int = 2,
    tensors: int = 8,
    secure: bool = True,
    floor_gb: float = 3.0,
) -> dict[str, Any]:
    """Run the large-model federation in ``work``; returns per-process growth and the run's figures."""
    work.mkdir(parents=True, exist_ok=True)
    model = int(model_mb * MB) // 4 * 4
    limit = max(2 * model + 64 * 2**20, 1 << 30)
    server_toml = work / "server.toml"
    server_toml.write_text(
        "[server]\n"
        f"max-message-bytes = {limit}\nmax-inflight-bytes = {limit}\n"
        f"max-total-inflight-bytes = {limit * (daemons + 1)}\n"
    )
    edge_args: list[str] = []
    if limit > 1 << 30:  # the daemon's default limit is 1 GiB per message
        (work / "edge.toml").write_text(f"[edge]\nmax-message-bytes = {limit}\n")
        edge_args = ["--config", str(work / "edge.toml")]
    with LocalFederation(work, secure=secure) as fed:
        fed.start_server(["--config", str(server_toml), "--metrics-address", "127.0.0.1:0"])
        for i in range(daemons):
            fed.start_daemon(
                f"edge-{i}",
                ["--client-app", f"{APP}:client_app", "--app-dir", str(REPO), *edge_args],
            )
        fed.wait_for_nodes(daemons)
        control = fed.control()
        node_ids = [n.node_id for n in control.list_nodes() if n.online]
        control.close()
        assert fed.server is not None
        server, edge = fed.server.pid, [p.pid for p in fed.daemons]
        warm = Sampler(server, edge, int(floor_gb * 2**30))
        warm.start()
        _run(fed, work, 1, daemons, 1, tensors)
        warm.stop()
        worker_base = max((warm.peaks.get(p, 0) for p in warm.workers), default=0)
        bytes_before = _fleet_bytes(work / "server")
        base = {pid: reset_peak(pid) for pid in [server, *edge]}
        sampler = Sampler(server, edge, int(floor_gb * 2**30), on_trip=fed.close)
        sampler.start()
        try:
            figures = _run(fed, work, model_mb, daemons, rounds, tensors)
        finally:
            sampler.stop()
            if sampler.tripped:
                raise RuntimeError(f"stopped by the memory watchdog: {sampler.tripped}")
        bytes_after = _fleet_bytes(work / "server")
    workers = [p for p in sampler.workers if p not in warm.workers]

    def growth(pid: int, baseline: int) -> dict[str, float]:
        grown = sampler.peaks.get(pid, 0) - baseline
        return {"growth_mb": grown / MB, "x_model": grown / model}

    return {
        "model_mb": model / MB,
        "daemons": daemons,
        "rounds": rounds,
        "secure": secure,
        "server": growth(server, base[server]),
        "worker": [growth(p, worker_base) for p in workers],
        "daemon": [growth(p, base[p]) for p in edge],
        "fleet_bytes": {k: (bytes_after[k] - bytes_before.get(k, 0.0)) / MB for k in bytes_after},
        "expected": rounds * expected_step(node_ids),
        **figures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-mb", type=float, default=2600.0)
    parser.add_argument("--daemons", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tensors", type=int, default=40)
    parser.add_argument("--floor-gb", type=float, default=3.0)
    parser.add_argument("--insecure", action="store_true")
    parser.add_argument("--workdir", default="")
    parser.add_argument("--engine", choices=["fedge", "flower"], default="fedge")
    args = parser.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory(prefix="fedge-large-") as tmp:
        work = Path(args.workdir) if args.workdir else Path(tmp)
        if args.engine == "flower":
            from bench.flower_large import measure_flower

            out = measure_flower(work, args.model_mb, args.daemons, args.rounds, args.tensors, args.floor_gb)
        else:
            out = measure(
                work, args.model_mb, args.daemons, args.rounds, args.tensors, not args.insecure, args.floor_gb
            )
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    main()
