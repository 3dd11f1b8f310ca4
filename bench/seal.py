"""Sealed-update throughput: fedge's seal+open vs raw AES-256-GCM, measured in the same run.

    python bench/seal.py [--sizes 1,16,100] [--reps N] [--no-tuned]

For each payload size (MiB of float32 tensors) on one pinned core:

* raw GCM     AES-256-GCM encrypt_into + decrypt_into of the whole payload into reused buffers:
              the ceiling (no allocation, no framing, no signatures).
* seal+open   ``fedge.security.seal.seal`` then ``open_sealed`` (HPKE key wrap, chunked GCM,
              Ed25519 sign/verify, framing, fresh output buffers as in real use).
* HPKE 1-shot the rejected design: one ``hpke.Suite.encrypt``/``decrypt`` over the concatenated
              payload (no signature or framing, so optimistic for it).
* tuned       seal+open again in a child process whose glibc keeps freed memory
              (``GLIBC_TUNABLES`` mmap/trim thresholds): the difference is the cost of page
              faults on fresh multi-MB ``bytes``, which this VM makes expensive.

Throughput = payload bytes / (time of both directions); medians over ``--reps`` runs.
Goal: seal+open >= 2 GB/s at 16 MiB.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench._timing import median_seconds, pin_one_core  # noqa: E402

GOAL_GBPS, GOAL_MIB = 2.0, 16
TUNED_ENV = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=4294967296"


def _payload(mib: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(mib)
    n = (mib << 20) // 4 - 1024
    return {
        "layer.weight": rng.standard_normal(n).astype(np.float32),
        "layer.bias": rng.standard_normal(1024).astype(np.float32),
    }


def measure(mib: int, reps: int, *, alternatives: bool = True) -> dict[str, float]:
    """GB/s of each variant for a ``mib``-MiB payload (seal/open separately too)."""
    from cryptography.hazmat.primitives import hpke
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from fedge.security.seal import new_aggregator_key, open_sealed, seal

    arrays = _payload(mib)
    size = sum(a.nbytes for a in arrays.values())
    server, device = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    agg, ann = new_aggregator_key(1, server, ttl=3600)
    ctx = dict(run_id=1, round=1, node_id=1, stage="train")
    expect = dict(expected_run_id=1, expected_round=1, expected_node_id=1, expected_stage="train")
    pub = device.public_key()

    def do_seal() -> bytes:
        return seal(arrays, announcement=ann, device_key=device, **ctx)  # type: ignore[arg-type]

    def do_open(data: bytes) -> dict[str, np.ndarray]:
        return open_sealed(data, aggregator_key=agg, device_signing_pub=pub, **expect)  # type: ignore[arg-type]

    def seal_open() -> None:
        out = do_open(do_seal())
        assert out["layer.bias"][0] == arrays["layer.bias"][0]

    sealed = do_seal()
    gbps = lambda seconds: size / seconds / 1e9  # noqa: E731
    result = {
        "mib": mib,
        "seal_open": gbps(median_seconds(seal_open, reps, warmup=2)),
        "seal": gbps(median_seconds(do_seal, reps, warmup=2)),
        "open": gbps(median_seconds(lambda: do_open(sealed), reps, warmup=2)),
    }
    if not alternatives:
        return result

    flat = np.concatenate([a.reshape(-1) for a in arrays.values()]).view(np.uint8)
    aead, nonce = AESGCM(AESGCM.generate_key(256)), os.urandom(12)
    ct, back = np.empty(flat.nbytes + 16, np.uint8), np.empty(flat.nbytes, np.uint8)

    def raw() -> None:
        aead.encrypt_into(nonce, memoryview(flat), None, memoryview(ct))
        aead.decrypt_into(nonce, memoryview(ct), None, memoryview(back))

    suite = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
    x_pub = agg.private_key.public_key()

    def hpke_single_shot() -> None:
        plaintext = b"".join(memoryview(a.reshape(-1).view(np.uint8)) for a in arrays.values())
        opened = suite.decrypt(suite.encrypt(plaintext, x_pub, b"ctx"), agg.private_key, b"ctx")
        np.frombuffer(opened, np.float32)

    result["raw"] = gbps(median_seconds(raw, reps, warmup=2))
    result["hpke"] = gbps(median_seconds(hpke_single_shot, max(3, reps // 2), warmup=2))
    return result


def _reps(mib: int, reps: int | None) -> int:
    return reps if reps else max(5, min(40, 400 // max(mib, 1)))


def _tuned(sizes: list[int], reps: int | None) -> dict[int, float]:
    """seal+open GB/s in a child process whose glibc never returns freed memory to the OS."""
    env = {**os.environ, "GLIBC_TUNABLES": TUNED_ENV, "FLWR_TELEMETRY_ENABLED": "0"}
    args = [sys.executable, __file__, "--child", "--sizes", ",".join(map(str, sizes))]
    if reps:
        args += ["--reps", str(reps)]
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900, check=True)
    return {int(r["mib"]): float(r["seal_open"]) for r in json.loads(out.stdout)}


def compare_rounds(clients: int, rounds: int) -> dict[str, float]:
    """Mean steady-state round wall time of the benchmark app with mTLS+sealing and with --insecure."""
    import tempfile

    from bench.fedge_runner import run_fedge

    out = {}
    with tempfile.TemporaryDirectory(prefix="fedge-seal-bench-") as tmp:
        for name, secure in (("insecure", False), ("mtls+sealing", True)):
            timings = sorted(
                run_fedge(clients, rounds, Path(tmp) / name, secure=secure), key=lambda r: r["round"]
            )
            out[name] = statistics.fmean(float(r["wall_s"]) for r in timings[1:])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1,16,100", help="payload sizes in MiB, comma-separated")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per size")
    parser.add_argument("--no-tuned", action="store_true", help="skip the tuned-malloc child run")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=4, help="federated rounds per mode (0: skip)")
    parser.add_argument("--clients", type=int, default=10, help="edge daemons in the round comparison")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    # Before pinning to one core: the daemons inherit this process's CPU affinity.
    rounds = None if args.child or args.rounds < 2 else compare_rounds(args.clients, args.rounds)
    cpu = pin_one_core()
    if args.child:
        print(json.dumps([measure(m, _reps(m, args.reps), alternatives=False) for m in sizes]))
        return

    from rich.console import Console
    from rich.table import Table

    console = Console()
    results = []
    for mib in sizes:
        with console.status(f"measuring {mib} MiB …"):
            results.append(measure(mib, _reps(mib, args.reps)))
    tuned = {} if args.no_tuned else _tuned(sizes, args.reps)

    table = Table(title=f"seal+open vs raw AES-256-GCM (GB/s, median; one core: cpu {cpu})")
    for col in ("payload", "raw GCM", "seal", "open", "seal+open", "ratio", "tuned malloc", "HPKE 1-shot"):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(
            f"{r['mib']} MiB",
            f"{r['raw']:.2f}",
            f"{r['seal']:.2f}",
            f"{r['open']:.2f}",
            f"[bold]{r['seal_open']:.2f}[/]",
            f"{r['seal_open'] / r['raw']:.2f}x",
            f"{tuned[r['mib']]:.2f}" if r["mib"] in tuned else "-",
            f"{r['hpke']:.2f}",
        )
    console.print(table)
    if rounds is not None:
        secure, plain = rounds["mtls+sealing"], rounds["insecure"]
        overhead = secure / plain - 1.0
        console.print(
            f"round wall time, {args.clients} daemons, ~1M-param model (mean of rounds 2..{args.rounds}): "
            f"mTLS+sealing {secure:.3f} s vs --insecure {plain:.3f} s -> {overhead:+.1%} "
            f"(goal <= +10%: {'[green]met[/]' if overhead <= 0.10 else '[red]not met[/]'})"
        )
    goal = next((r for r in results if r["mib"] == GOAL_MIB), None)
    if goal is not None:
        ok = goal["seal_open"] >= GOAL_GBPS
        console.print(
            f"goal seal+open >= {GOAL_GBPS} GB/s at {GOAL_MIB} MiB: "
            + ("[green]met[/]" if ok else "[red]not met[/]")
            + f" ({goal['seal_open']:.2f} GB/s; tuned malloc {tuned.get(GOAL_MIB, float('nan')):.2f})"
        )


if __name__ == "__main__":
    main()
