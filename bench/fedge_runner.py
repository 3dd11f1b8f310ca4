"""fedge half of ``bench/round_overhead.py``: the same Flower app on fedge's transport.

Starts a real ``fedge server`` and ``num_nodes`` real ``fedge client`` daemons on loopback
(through :class:`fedge.sim.local.LocalFederation`, the production launch path), then runs
``bench.flower_app.app:server_app`` with ``fedge run start`` and returns the per-round timings
the app writes to ``timings-path`` (same contract as ``bench.stock_flower.run_stock_flower``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from fedge.sim.local import LocalFederation

REPO = Path(__file__).resolve().parent.parent
APP = "bench.flower_app.app"


def run_fedge(
    num_nodes: int,
    num_rounds: int,
    workdir: Path | str,
    stats: dict[str, float] | None = None,
    secure: bool = True,
    sets: list[str] | None = None,
    app: str = APP,
) -> list[dict[str, Any]]:
    """Run the benchmark app on fedge (mTLS unless ``secure=False``); returns per-round timings.

    ``sets`` are extra run-config assignments (``key=value``), passed as ``--set`` each. ``app``
    is the module holding ``server_app``/``client_app`` (writing ``timings-path`` the same way).
    """
    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    timings = work / "timings.json"
    timings.unlink(missing_ok=True)
    stats = {} if stats is None else stats
    started = time.perf_counter()
    with LocalFederation(work, secure=secure) as fed:
        address = fed.start_server()
        for i in range(num_nodes):
            fed.start_daemon(f"edge-{i}", ["--client-app", f"{app}:client_app", "--app-dir", str(REPO)])
        fed.wait_for_nodes(num_nodes)
        stats["startup_s"] = time.perf_counter() - started
        stats["daemon_rss_mb"] = sum(psutil.Process(p.pid).memory_info().rss for p in fed.daemons) / 2**20
        t0 = time.perf_counter()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "fedge",
                "run",
                "start",
                "--server",
                address,
                *fed.auth,
                "--server-app",
                f"{app}:server_app",
                "--app-dir",
                str(REPO),
                "--rounds",
                str(num_rounds),
                "--min-clients",
                str(num_nodes),
                "--set",
                f"timings-path={timings}",
                *(arg for item in sets or [] for arg in ("--set", item)),
            ],
            capture_output=True,
            text=True,
            timeout=900,
        )
        stats["run_s"] = time.perf_counter() - t0
        if done.returncode != 0:
            raise RuntimeError(f"fedge run failed:\n{done.stderr[-2000:]}")
    data = json.loads(timings.read_text())
    return list(data["rounds"])
