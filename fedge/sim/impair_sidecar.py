"""``python -m fedge.sim.impair_sidecar``: the impairment proxy as a service of its own.

Why: ``tc netem`` needs the kernel's ``sch_netem`` module, which many hosted kernels (and the
machines fedge is tested on) lack, and ``tbf`` needs CAP_NET_ADMIN. Run as the compose
``impair`` sidecar between the edges and the server, fedge's own proxy (:mod:`fedge.sim.impair`)
gives them a slow, late, lossy link on any kernel and without privileges: every byte of each
forwarded connection, both directions, goes through delay, jitter, loss and the rate limit.

It takes the same profile as ``fedge simulate --netem`` (:class:`fedge.sim.netem.NetemSpec`) and
forwards each ``LISTEN=TARGET`` pair (target names are resolved on every connection, so a
restarted server is found again). Every ``--stats-every`` seconds in which something moved, and
once on SIGTERM/SIGINT, it prints one line per forward: connections, bytes each way, injected
losses and resets — the evidence that traffic really took the impaired path.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

from fedge.config import split_address
from fedge.errors import FedgeError
from fedge.sim.impair import ImpairmentProxy, LinkStats
from fedge.sim.netem import NetemSpec

_FORWARD_HINT = "use --forward LISTEN_HOST:PORT=TARGET_HOST:PORT, e.g. 0.0.0.0:9092=server:9092"


def parse_forward(text: str) -> tuple[tuple[str, int], tuple[str, int]]:
    """``0.0.0.0:9092=server:9092`` → ``(("0.0.0.0", 9092), ("server", 9092))``."""
    listen, sep, target = text.partition("=")
    if not sep:
        raise FedgeError(f"--forward {text!r} has no '='", _FORWARD_HINT)
    try:
        return split_address(listen), split_address(target)
    except FedgeError:
        raise FedgeError(f"--forward {text!r} is not LISTEN=TARGET", _FORWARD_HINT) from None


def stats_line(listen: tuple[str, int], target: tuple[str, int], stats: LinkStats) -> str:
    """One forward's counters, as the sidecar logs them."""
    return (
        f"impair {listen[0]}:{listen[1]} -> {target[0]}:{target[1]}: {stats.connections} connections, "
        f"{stats.bytes_up} bytes up, {stats.bytes_down} bytes down, {stats.losses} losses, "
        f"{stats.resets} resets, {len(stats.errors)} connect errors"
    )


async def serve(
    spec: NetemSpec, forwards: list[tuple[tuple[str, int], tuple[str, int]]], every: float
) -> None:
    """Run the proxies until SIGTERM or SIGINT; log counters while traffic moves and at the end."""
    proxies = [
        ImpairmentProxy(listen, target, spec.impairment(with_rate=True)) for listen, target in forwards
    ]
    bound = [await proxy.start() for proxy in proxies]  # port 0 in LISTEN: the one picked
    for (host, port), proxy in zip(bound, proxies, strict=True):
        print(f"impair: {host}:{port} -> {proxy.target[0]}:{proxy.target[1]} ({spec})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    logged: list[str] = [""] * len(proxies)
    try:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), every)
            except TimeoutError:
                pass
            for i, proxy in enumerate(proxies):
                line = stats_line(bound[i], proxy.target, proxy.stats)
                if line != logged[i] or stop.is_set():
                    print(line, flush=True)
                    logged[i] = line
    finally:
        for proxy in proxies:
            await proxy.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m fedge.sim.impair_sidecar", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--netem", required=True, help='profile: "delay=100ms jitter=20ms loss=2%% rate=1mbit"'
    )
    parser.add_argument("--forward", action="append", required=True, help="LISTEN_HOST:PORT=TARGET_HOST:PORT")
    parser.add_argument("--stats-every", type=float, default=10.0, help="seconds between counter lines")
    args = parser.parse_args(argv)
    try:
        spec = NetemSpec.parse(args.netem)
        forwards = [parse_forward(f) for f in args.forward]
        if args.stats_every <= 0:
            raise FedgeError("--stats-every must be > 0", "give seconds, e.g. --stats-every 10")
    except FedgeError as exc:
        print(f"error: {exc.message}\nhint: {exc.hint}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        asyncio.run(serve(spec, forwards, args.stats_every))
    except OSError as exc:  # a listen address that cannot be bound
        print(f"error: cannot listen: {exc}\nhint: pick a free LISTEN port in --forward", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
