"""``bench/secagg.py``'s end-to-end runs of Flower's SecAgg+: on Ray, and on fedge; round summaries.

Flower's legacy apps live in ``bench/flower_legacy.py``; on Ray each mode runs in its own process
(Ray's global state stays out of the bench), on fedge through ``bench.fedge_runner``.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Round 1 of each run is warm-up; median/min/mean wall of the rest, and mean client compute."""
    steady = [r for r in rounds if r["round"] > 1] or rounds
    walls = [float(r["wall_s"]) for r in steady]
    # With fedge secagg the ServerApp sees one synthetic reply whose compute-s is the clients' mean.
    compute = [float(r["sum_client_compute_s"]) / max(1, int(r["n_replies"])) for r in steady]
    return {
        "rounds_measured": len(steady),
        "first_wall_s": [float(r["wall_s"]) for r in rounds if r["round"] == 1],
        "median_wall_s": statistics.median(walls),
        "min_wall_s": min(walls),
        "mean_wall_s": statistics.fmean(walls),
        "mean_client_compute_s": statistics.fmean(compute),
        "errors": sum(int(r["n_errors"]) for r in rounds),
    }


# --------------------------------------------------------------------------- 2. Flower simulation


def bench_flower(
    n: int, rounds: int, k: int, t: int, workdir: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    workdir.mkdir(parents=True, exist_ok=True)
    for mode in ("plain", "secagg"):
        log(f"Flower simulation {mode}: {n} clients x {rounds} rounds ...")
        result, logfile = workdir / f"flower-{mode}.json", workdir / f"flower-{mode}.log"
        result.unlink(missing_ok=True)
        cmd = [
            sys.executable,
            str(REPO / "bench" / "flower_legacy.py"),
            "--mode",
            mode,
            "--clients",
            str(n),
            "--rounds",
            str(rounds),
            "--k",
            str(k),
            "--t",
            str(t),
            "--out",
            str(result),
        ]
        with logfile.open("w") as fh:
            done = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=1800, check=False)
        if done.returncode != 0 or not result.is_file():
            tail = logfile.read_text(errors="replace").strip().splitlines()[-15:]
            out[mode] = {"error": f"exit {done.returncode}; log {logfile}:\n" + "\n".join(tail)}
            continue
        data = json.loads(result.read_text())
        out[mode] = {
            **summarize(data["rounds"]),
            "total_s": data["total_s"],
            "cpus_per_client": data["cpus_per_client"],
            "raw": data["rounds"],
        }
    return out


def bench_flower_on_fedge(
    n: int, rounds: int, k: int, t: int, workdir: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    """Flower's legacy SecAgg+ apps (``bench/flower_legacy.py``), unchanged, on real fedge daemons."""
    from bench.fedge_runner import run_fedge

    log(f"Flower's SecAgg+ on fedge: {n} daemons x {rounds} rounds ...")
    sets = [f"flower-k={k}", f"flower-t={t}"]
    try:
        rows = run_fedge(n, rounds, workdir / "flower-on-fedge", sets=sets, app="bench.flower_legacy")
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
        return {"error": f"{type(exc).__name__}: {str(exc)[-1500:]}"}
    short = [r["round"] for r in rows if int(r["n_replies"]) < n or int(r["n_errors"])]
    if short or len(rows) != rounds:
        return {"error": f"{len(rows)}/{rounds} rounds, incomplete rounds {short}"}
    return {**summarize(rows), "raw": rows}
