"""Secure aggregation (SecAgg+) cost: fedge vs fedge plaintext vs Flower's own SecAgg+, in one run.

    python bench/secagg.py [--quick] [--out results.json] [--clients N] [--rounds R] [--reps K]

Three measurements, all on the bench model of ``bench/flower_app`` (784-1024-256-10 MLP, 1,068,810
float32 parameters, one SGD step of batch 32 per client per round):

1. **fedge end to end.** ``bench.fedge_runner.run_fedge`` starts a real fedge server and N real
   daemons over mTLS with sealed updates (the production setting) and runs the bench ServerApp, once
   plain and once with run-config ``secagg=true``, which wraps its ``TimedFedAvg`` in
   ``fedge.strategies.SecureAggregation`` (default settings: k, t automatic; 22-bit quantization).
   A round's wall time runs from ``configure_train`` to the end of ``aggregate_train``, so with
   secagg it spans all four stages (advertise, share, masked input, unmask). Plain and secagg runs
   alternate ``--reps`` times (fresh federation each) so machine-load drift hits both alike; round 1
   of every run is warm-up (connections, app import, torch initialisation) and dropped; the
   statistic is the median of the remaining rounds, pooled over reps (and, since other people's
   load only ever adds time, the ratio of the fastest rounds too). The secagg runs also record the
   wall time of each SecAgg+ exchange (``bench/secagg_stages.py``), to show where the time goes.
2. **Flower's SecAgg+** (legacy ``SecAggPlusWorkflow`` + ``secaggplus_mod``, the only API it exists
   for) on Flower's Ray simulation engine, vs the same legacy app with a plain ``DefaultWorkflow``
   (``bench/flower_legacy.py``, each in its own process). Same model, same client step, same n,
   Flower's ``num_shares = k + 1`` and threshold t set to fedge's k and t; same warm-up rule.
   The same SecAgg+ apps, unchanged, also run **on fedge** (real daemons, mTLS, sealing; one run):
   what a Flower user who keeps Flower's SecAgg+ gets from fedge's transport.
3. **Primitives, in-process, pinned to one core.** fedge's mask PRG (``prg``: HKDF + AES-256-CTR
   keystream into a uint32 array) vs raw AES-256-CTR over the same number of zero bytes (one
   ``update_into`` into a reused buffer: the ceiling) vs Flower's mask generator
   (``flwr.common.secure_aggregation.secaggplus_utils.pseudo_rand_gen``: numpy ``RandomState``
   ``randint`` into int64); GB/s counts 4 bytes per mask element for all three. Plus the cost of
   each SecAgg+ stage of ``fedge.security.secagg`` for n clients and d = params + 1 (the weight),
   the client mod's float work around it and the server's dequantize/unflatten.

Medians everywhere; the machine is shared, so absolute numbers move between runs, ratios less.
Goal (issue 4): fedge secagg round <= 1.3x plaintext round.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # import `bench` as a package when run as a script
from bench._timing import one_core  # noqa: E402
from bench.secagg_primitives import bench_prg, bench_stages, prg_table, stage_table  # noqa: E402
from bench.secagg_runs import bench_flower, bench_flower_on_fedge, summarize  # noqa: E402

GOAL_RATIO = 1.3
CORES = os.cpu_count() or 1
MiB = 1 << 20


# --------------------------------------------------------------------------- helpers


# --------------------------------------------------------------------------- 1. fedge end to end


def bench_fedge(n: int, rounds: int, reps: int, workdir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Alternate plain and secagg fedge runs ``reps`` times; pool their rounds per mode."""
    from bench.fedge_runner import run_fedge

    runs: dict[str, list[dict[str, Any]]] = {"plain": [], "secagg": []}
    stats: dict[str, list[dict[str, float]]] = {"plain": [], "secagg": []}
    stage_rounds: list[dict[str, Any]] = []
    errors: dict[str, str] = {}
    for rep in range(reps):
        for mode, sets in (("plain", []), ("secagg", ["secagg=true"])):
            if mode in errors:
                continue
            log(f"fedge {mode}: {n} daemons x {rounds} rounds (rep {rep + 1}/{reps}) ...")
            st: dict[str, float] = {}
            try:
                # A lost instruction must fail the round in minutes, not the app's default 10.
                rows = run_fedge(
                    n, rounds, workdir / f"fedge-{mode}-{rep}", st, sets=[*sets, "round-timeout=180"]
                )
            except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
                errors[mode] = f"{type(exc).__name__}: {str(exc)[-1500:]}"
                continue
            # Plain rounds must hear from all n clients; a secagg round is one synthetic reply (or fails).
            expected = n if mode == "plain" else 1
            short = [r["round"] for r in rows if int(r["n_replies"]) < expected or int(r["n_errors"])]
            if short or len(rows) != rounds:
                errors[mode] = f"run {rep + 1}: {len(rows)}/{rounds} rounds, incomplete rounds {short}"
                continue
            runs[mode].extend(rows)
            stats[mode].append(st)
            stages_file = workdir / f"fedge-{mode}-{rep}" / "timings.json.stages.json"
            if mode == "secagg" and stages_file.is_file():
                stage_rounds.extend(json.loads(stages_file.read_text()))
    out: dict[str, dict[str, Any]] = {
        mode: {"error": errors[mode]}
        if mode in errors
        else {**summarize(rows), "runs": stats[mode], "raw": rows}
        for mode, rows in runs.items()
    }
    if "error" not in out["secagg"] and stage_rounds:
        out["secagg"]["stages"] = summarize_stages(stage_rounds, out["secagg"]["raw"])
    if "error" not in out["plain"]:
        steady = [r for r in out["plain"]["raw"] if r["round"] > 1]
        out["plain"]["median_exchange_s"] = statistics.median(float(r["send_and_receive_s"]) for r in steady)
    return out


def summarize_stages(stage_rounds: list[dict[str, Any]], rounds: list[dict[str, Any]]) -> dict[str, float]:
    """Median wall time of each SecAgg+ exchange in the real runs (round 1 of each run dropped)."""
    steady = [r for r in stage_rounds if r["round"] > 1]
    per: dict[str, list[float]] = {}
    for r in steady:
        for e in r["exchanges"]:
            per.setdefault(e["stage"], []).append(float(e["s"]))
        per.setdefault("server work between exchanges", []).append(float(r["server_between_s"]))
        per.setdefault("whole secure train exchange", []).append(float(r["train_round_s"]))
    out = {name: statistics.median(v) for name, v in per.items()}
    walls = [float(r["wall_s"]) - float(r["send_and_receive_s"]) for r in rounds if r["round"] > 1]
    out["rest of the round (configure + FedAvg step)"] = statistics.median(walls)
    return out


# --------------------------------------------------------------------------- report


def _ok(s: dict[str, Any] | None) -> bool:
    return s is not None and "error" not in s


def round_table(results: dict[str, Any]) -> tuple[Any, list[str]]:
    """End-to-end round times (fedge and Flower, plain and secagg) and failure messages."""
    from rich.table import Table

    n, k, t = results["clients"], results["k"], results["t"]
    fedge, flower = results.get("fedge", {}), results.get("flower", {})
    rows = [
        ("fedge plaintext (mTLS + sealing)", fedge.get("plain")),
        (f"fedge SecAgg+ (k={k}, t={t})", fedge.get("secagg")),
        ("Flower sim, plain DefaultWorkflow", flower.get("plain")),
        (f"Flower sim, SecAggPlusWorkflow (shares={k + 1}, t={t})", flower.get("secagg")),
        (f"Flower's SecAggPlusWorkflow on fedge (shares={k + 1}, t={t})", results.get("flower_on_fedge")),
    ]
    table = Table(
        title=f"Round wall time (s), {n} clients, 1,068,810-param MLP; rounds 2..{results['rounds']}"
        f" of {results['reps']} fedge run(s) / 1 Flower run per setup"
    )
    for col in ("setup", "rounds", "r1 wall", "median", "min", "mean", "client compute"):
        table.add_column(col, justify="left" if col == "setup" else "right", no_wrap=col == "setup")
    errors = []
    for name, s in rows:
        if s is None:
            continue
        if "error" in s:
            table.add_row(name, "FAILED", "", "", "", "", "")
            errors.append(f"{name} failed: {s['error']}")
            continue
        table.add_row(
            name,
            str(s["rounds_measured"]),
            " ".join(f"{x:.2f}" for x in s["first_wall_s"]),
            f"{s['median_wall_s']:.3f}",
            f"{s['min_wall_s']:.3f}",
            f"{s['mean_wall_s']:.3f}",
            f"{s['mean_client_compute_s']:.3f}",
        )
    return table, errors


def real_stage_table(stages: dict[str, float], plain: dict[str, Any]) -> Any:
    """Where a real fedge SecAgg+ round spends its time, next to the plaintext train exchange."""
    from rich.table import Table

    labels = {
        "advertise": "advertise-keys exchange",
        "share": "share-keys exchange",
        "mask": "masked-input exchange (train + mask + fold)",
        "unmask": "unmask exchange",
    }
    table = Table(title="fedge SecAgg+ round in the real runs, stage by stage: median ms (rounds 2..R)")
    table.add_column("part", no_wrap=True)
    table.add_column("ms", justify="right")
    for name, sec in stages.items():
        table.add_row(labels.get(name, name), f"{1e3 * sec:.1f}")
    if "median_exchange_s" in plain:
        table.add_row("(plaintext run: train exchange)", f"{1e3 * plain['median_exchange_s']:.1f}")
    return table


def compute_ratios(results: dict[str, Any]) -> dict[str, float]:
    ratios: dict[str, float] = {}
    fp, fs = results.get("fedge", {}).get("plain"), results.get("fedge", {}).get("secagg")
    lp, ls = results.get("flower", {}).get("plain"), results.get("flower", {}).get("secagg")
    if _ok(fp) and _ok(fs):
        ratios["fedge_secagg_over_plain"] = fs["median_wall_s"] / fp["median_wall_s"]
        ratios["fedge_secagg_minus_plain_s"] = fs["median_wall_s"] - fp["median_wall_s"]
        # Other people's load only ever adds time: the fastest rounds are the least disturbed.
        ratios["fedge_secagg_over_plain_min"] = fs["min_wall_s"] / fp["min_wall_s"]
    if _ok(lp) and _ok(ls):
        ratios["flower_secagg_over_plain"] = ls["median_wall_s"] / lp["median_wall_s"]
        ratios["flower_secagg_over_plain_min"] = ls["min_wall_s"] / lp["min_wall_s"]
    if _ok(fs) and _ok(ls):
        ratios["flower_secagg_over_fedge_secagg"] = ls["median_wall_s"] / fs["median_wall_s"]
    if _ok(fp) and _ok(lp):
        ratios["flower_plain_over_fedge_plain"] = lp["median_wall_s"] / fp["median_wall_s"]
    lf = results.get("flower_on_fedge")
    if _ok(lf) and _ok(ls):
        ratios["flower_secagg_on_fedge_over_ray"] = lf["median_wall_s"] / ls["median_wall_s"]
    if _ok(lf) and _ok(fs):
        ratios["flower_secagg_on_fedge_over_fedge_secagg"] = lf["median_wall_s"] / fs["median_wall_s"]
    for n_str, row in results.get("prg", {}).items():
        ratios[f"prg_time_over_raw_ctr_{n_str}"] = row["prg_out_s"] / row["raw_ctr_s"]
        if "flower_s" in row:
            ratios[f"flower_maskgen_time_over_prg_{n_str}"] = row["flower_s"] / row["prg_out_s"]
    return ratios


def ratio_lines(results: dict[str, Any], ratios: dict[str, float]) -> list[str]:
    lines = []
    if "fedge_secagg_over_plain" in ratios:
        r, extra_ms = ratios["fedge_secagg_over_plain"], 1e3 * ratios["fedge_secagg_minus_plain_s"]
        verdict = "met" if r <= GOAL_RATIO else "NOT met"
        lines.append(
            f"fedge secagg / fedge plaintext round: {r:.2f}x ({extra_ms:+.0f} ms) "
            f"-- goal <= {GOAL_RATIO}x: {verdict}; "
            f"fastest rounds: {ratios['fedge_secagg_over_plain_min']:.2f}x"
        )
    real = results.get("fedge", {}).get("secagg", {}).get("stages", {})
    if real:
        extra = sum(
            real.get(k, 0.0) for k in ("advertise", "share", "unmask", "server work between exchanges")
        )
        lines.append(
            "fedge SecAgg+ time outside the train exchange (3 setup exchanges + server unmasking): "
            f"{1e3 * extra:.0f} ms"
        )
    labels = {
        "flower_secagg_over_plain": "Flower secagg / Flower plain round (Ray simulation)",
        "flower_secagg_over_plain_min": "Flower secagg / Flower plain, fastest rounds",
        "flower_secagg_over_fedge_secagg": "Flower secagg round / fedge secagg round",
        "flower_plain_over_fedge_plain": "Flower plain round (sim) / fedge plaintext round (daemons)",
        "flower_secagg_on_fedge_over_ray": "Flower's SecAgg+ round: on fedge / on Ray",
        "flower_secagg_on_fedge_over_fedge_secagg": "Flower's SecAgg+ on fedge / fedge's SecAgg+ round",
    }
    lines += [f"{label}: {ratios[key]:.2f}x" for key, label in labels.items() if key in ratios]
    for n_str, row in results.get("prg", {}).items():
        over_raw = row["prg_out_s"] / row["raw_ctr_s"]
        line = f"{int(n_str):,} elements: fedge prg time / raw AES-CTR time {over_raw:.2f}x"
        if "flower_s" in row:
            line += f"; Flower mask gen time / fedge prg time {row['flower_s'] / row['prg_out_s']:.1f}x"
        lines.append(line)
    st, n = results.get("stages"), results["clients"]
    if st and "fedge_secagg_minus_plain_s" in ratios:
        client = sum(v for k, v in st.items() if k.startswith("client") and "alone" not in k)
        server = (
            sum(v for k, v in st.items() if k.startswith("server"))
            + (n - 1) * st["server: fold one masked input"]
        )
        lines.append(
            f"secagg CPU in-process: {1e3 * client:.0f} ms per client (x{n} clients / {CORES} cores = "
            f"{1e3 * client * n / CORES:.0f} ms) + {1e3 * server:.0f} ms server per round; "
            f"measured round delta {1e3 * ratios['fedge_secagg_minus_plain_s']:.0f} ms"
        )
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description="SecAgg+ cost: fedge vs plaintext vs Flower's SecAgg+.")
    ap.add_argument("--quick", action="store_true", help="iterate fast: 5 clients, 3 rounds, 1 rep")
    ap.add_argument("--clients", type=int, default=None, help="clients per round (default 10; quick 5)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per run incl. warm-up (default 8)")
    ap.add_argument("--reps", type=int, default=None, help="alternating plain/secagg fedge runs (default 3)")
    ap.add_argument("--workdir", type=Path, default=REPO / "runs" / "secagg")
    ap.add_argument("--out", type=Path, default=None, help="write all results as JSON here")
    ap.add_argument(
        "--skip", action="append", default=[], choices=("prg", "stages", "fedge", "flower", "flower-on-fedge")
    )
    args = ap.parse_args()
    n = args.clients or (5 if args.quick else 10)
    rounds = args.rounds or (3 if args.quick else 8)
    reps = args.reps or (1 if args.quick else 3)
    if rounds < 2:
        ap.error("--rounds must be >= 2 (round 1 is warm-up)")
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

    from rich.console import Console

    from fedge.security.secagg import resolve_params
    from fedge.server.run_settings import RunSettings

    console = Console(width=None if sys.stdout.isatty() else 130)
    t_bench = time.monotonic()
    settings = RunSettings(min_clients=n, secagg=True).secagg_settings()  # a run's defaults
    params = resolve_params(n, settings.k, settings.t, settings.clip, settings.quant_bits)
    results: dict[str, Any] = {
        "clients": n,
        "rounds": rounds,
        "reps": reps,
        "cores": CORES,
        "k": params.k,
        "t": params.t,
        "quick": args.quick,
    }
    # Quiet parts first (no federation running), pinned to one core.
    if "prg" not in args.skip:
        console.print("PRG throughput ...")
        sizes = [1_000_000] if args.quick else [1_000_000, 10_000_000]
        with one_core():
            results["prg"] = bench_prg(sizes, sizes, 5 if args.quick else 15)
    if "stages" not in args.skip:
        console.print(f"fedge SecAgg+ stages in-process, n={n} ...")
        with one_core():
            results["stages"] = bench_stages(n, 1 if args.quick else 3)
    if "fedge" not in args.skip:
        results["fedge"] = bench_fedge(n, rounds, reps, args.workdir, console.print)
    if "flower" not in args.skip:
        results["flower"] = bench_flower(n, rounds, params.k, params.t, args.workdir, console.print)
    if "flower-on-fedge" not in args.skip:
        results["flower_on_fedge"] = bench_flower_on_fedge(
            n, rounds, params.k, params.t, args.workdir, console.print
        )

    errors: list[str] = []
    if "fedge" in results or "flower" in results or "flower_on_fedge" in results:
        table, errors = round_table(results)
        console.print(table)
    real = results.get("fedge", {}).get("secagg", {}).get("stages")
    if real:
        console.print(real_stage_table(real, results["fedge"]["plain"]))
    if "stages" in results:
        console.print(stage_table(results["stages"], n))
    if "prg" in results:
        console.print(prg_table(results["prg"]))
    results["ratios"] = compute_ratios(results)
    for line in [*ratio_lines(results, results["ratios"]), *errors]:
        console.print(line, markup=False)
    results["total_s"] = time.monotonic() - t_bench
    console.print(f"total bench time: {results['total_s']:.0f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
        console.print(f"results: {args.out}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
