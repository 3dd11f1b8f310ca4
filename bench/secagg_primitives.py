"""Part 3 of ``bench/secagg.py``: SecAgg+ primitives in-process, pinned to one core.

fedge's mask PRG vs raw AES-256-CTR (the ceiling) vs Flower's mask generator, and the cost of each
SecAgg+ stage of ``fedge.security.secagg`` (plus the client mod's float work and the server's
dequantize) for n clients and d = params + 1. See ``bench/secagg.py`` for the method.
"""

from __future__ import annotations

import functools
import os
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from bench._timing import median_seconds

MiB = 1 << 20


# --------------------------------------------------------------------------- 3. primitives


def bench_prg(sizes: list[int], flower_sizes: list[int], reps: int) -> dict[str, dict[str, float]]:
    """Seconds per mask of ``n`` uint32 elements: raw AES-CTR, fedge prg, Flower pseudo_rand_gen."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen

    from fedge.security.secagg import prg

    key, seed = os.urandom(32), os.urandom(32)
    out: dict[str, dict[str, float]] = {}
    for n in sorted(set(sizes) | set(flower_sizes)):
        row: dict[str, float] = {}
        if n in sizes:
            zeros, buf = bytes(4 * n), bytearray(4 * n + 15)

            def raw_ctr(zeros: bytes = zeros, buf: bytearray = buf) -> None:
                enc = Cipher(algorithms.AES256(key), modes.CTR(bytes(16))).encryptor()
                enc.update_into(zeros, buf)

            scratch = np.empty(n, dtype=np.uint32)
            row["raw_ctr_s"] = median_seconds(raw_ctr, reps)
            row["prg_out_s"] = median_seconds(functools.partial(prg, seed, n, out=scratch), reps)
            row["prg_new_s"] = median_seconds(functools.partial(prg, seed, n), reps)
        if n in flower_sizes:
            flower = functools.partial(pseudo_rand_gen, seed, 1 << 32, [(n,)])
            row["flower_s"] = median_seconds(flower, reps)
        out[str(n)] = row
    return out


class _Clock:
    """``with clock("step"): ...`` accumulates the step's durations under its name."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self.times.setdefault(name, []).append(time.perf_counter() - t0)


def bench_stages(n: int, reps: int) -> dict[str, float]:
    """Per-stage CPU cost of fedge's SecAgg+ core for ``n`` clients on the bench model, in-process.

    Client figures are per client (median over clients and reps); server figures per round. Each
    rep is a complete round (fresh keys, fresh graph), checked to unmask to the exact quantized sum.
    """
    import torch
    from flwr.app import ArrayRecord

    from bench.flower_app.app import make_model
    from fedge.security.secagg import (
        ClientSession,
        ServerSession,
        dequantize,
        quantize,
        resolve_params,
        round_tag,
    )
    from fedge.security.secagg.wire import difference, flatten, unflatten
    from fedge.server.run_settings import RunSettings

    settings = RunSettings(min_clients=n, secagg=True).secagg_settings()  # a run's defaults
    p = resolve_params(n, settings.k, settings.t, settings.clip, settings.quant_bits)
    torch.manual_seed(0)
    global_arrays, local_arrays = (
        ArrayRecord(make_model().state_dict()),
        ArrayRecord(make_model().state_dict()),
    )
    d = sum(int(a.numpy().size) for a in global_arrays.values()) + 1
    rng = np.random.default_rng(0)
    vectors = {i: rng.uniform(-0.01, 0.01, d) for i in range(1, n + 1)}
    quantized = np.stack([quantize(v, p.clip, p.quant_bits) for v in vectors.values()])
    expected = quantized.sum(axis=0, dtype=np.uint32)  # wraps mod 2^32, as the protocol does
    del quantized
    weight = 32 / settings.max_weight  # the bench client's num-examples / max_weight
    clock = _Clock()
    for rep in range(reps + 1):  # rep 0 warms caches and allocators and is not recorded
        if rep == 1:
            clock.times.clear()
        tag = round_tag(1, rep + 1)
        server = ServerSession(p, list(vectors), tag, os.urandom(16))
        clients: dict[int, ClientSession] = {}
        for i in vectors:
            with clock("client: new session (2 X25519 keys)"):
                clients[i] = ClientSession(i, p, tag)
            with clock("client: advertise"):
                keys = clients[i].advertise()
            server.receive_keys(i, *keys)
        for i, client in clients.items():
            offered = server.keys_for(i)
            with clock("client: share_keys (Shamir + AES-GCM)"):
                cts = client.share_keys(offered)
            server.receive_shares(i, cts)
        with clock("client mod: r·(local − global) ‖ r (as the mod builds it)"):
            built = difference(local_arrays, global_arrays)
            built[:-1] *= weight
            built[-1] = weight
        with clock("client: quantize alone (part of masked_input)"):
            quantize(vectors[1], p.clip, p.quant_bits)
        for i, client in clients.items():
            shares = server.shares_for(i)
            with clock(f"client: masked_input (quantize + {p.k + 1} PRG masks)"):
                masked = client.masked_input(vectors[i], shares)
            with clock("server: fold one masked input"):
                server.receive_masked(i, masked)
        survivors, gone = server.unmask_request()
        for i, client in clients.items():
            with clock("client: unmask"):
                answer = client.unmask(survivors, gone)
            server.receive_unmask(i, answer)
        with clock(f"server: finish (Shamir + {n} self-mask PRGs)"):
            total, _ = server.finish()
        with clock("server: dequantize + unflatten"):
            mean = dequantize(total, n, p.clip, p.quant_bits)[:-1]
            mean += flatten(global_arrays)
            unflatten(mean, global_arrays)
        if not np.array_equal(total, expected):
            raise AssertionError("fedge secagg in-process round did not unmask to the quantized sum")
    out: dict[str, float] = {name: statistics.median(v) for name, v in clock.times.items()}
    out.update(k=p.k, t=p.t, d=d)
    return out


def stage_table(st: dict[str, float], n: int) -> Any:
    from rich.table import Table

    table = Table(
        title=f"fedge SecAgg+ cost in-process (one core), n={n}, k={st['k']:.0f}, t={st['t']:.0f}, "
        f"d={st['d']:,.0f}: median ms (client rows: per client)"
    )
    table.add_column("step", no_wrap=True)
    table.add_column("ms", justify="right")
    for name, sec in st.items():
        if name not in ("k", "t", "d"):
            table.add_row(name, f"{1e3 * sec:.3f}")
    return table


def prg_table(prg: dict[str, dict[str, float]]) -> Any:
    from rich.table import Table

    table = Table(title="Mask expansion, one core: ms per mask, GB/s at 4 bytes per element")
    cols = {
        "raw_ctr_s": "raw AES-256-CTR",
        "prg_out_s": "fedge prg(out=buf)",
        "prg_new_s": "fedge prg (new array)",
        "flower_s": "Flower pseudo_rand_gen",
    }
    table.add_column("elements", justify="right")
    for label in cols.values():
        table.add_column(label, justify="right")
    for n_str, row in prg.items():
        n_el = int(n_str)
        cells = [
            f"{1e3 * row[key]:.2f} ms  {4 * n_el / row[key] / 1e9:.2f} GB/s" if key in row else "-"
            for key in cols
        ]
        table.add_row(f"{n_el:,}", *cells)
    return table
