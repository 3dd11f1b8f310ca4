"""The transport's floor under a fleet round: bare ``grpc.aio`` with mTLS, nothing of fedge's.

    python bench/grpc_floor.py [--devices 100,1000] [--active K] [--bytes 460840] [--processes 2]

One ``grpc.aio`` server process (fedge's PKI, server certificate and gRPC server settings,
one event loop, a generic bytes handler) and N client streams from ``--processes`` processes,
each with a device's channel settings and its own device certificate
(``bench.fleet_load.issue_fleet``). All N connect first; then ``--active`` of them (all by
default; the others stay connected and idle) do what a sampled device's stream does in a round:
a hello, one ``--bytes`` message down, one ``--bytes`` message up. An idle stream here is a
connected channel with no call open (a fedge device also holds a call and sends heartbeats). No
protobuf frames, no chunking, no sealing, no router, no run worker: what remains is gRPC, TLS
and asyncio. Reported per N: the round's wall time and the server process's CPU seconds, total
and per active stream.

This is the baseline for ``bench/fleet_scale.py``'s round: the server's CPU per sampled device
there, less this, is what fedge adds (docs/fleet-scale.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.fleet_load import VirtualIdentity, issue_fleet, raise_nofile  # noqa: E402

METHOD = "/bench.Floor/Connect"
# The 115k-parameter model of bench/fleet_task.py as float32 (its tensors' bytes, no envelope).
MODEL_BYTES = 115_210 * 4


def _handler(payload: bytes) -> Any:
    import grpc

    async def connect(requests: Any, context: Any) -> Any:
        it = aiter(requests)
        await anext(it)  # the hello
        yield payload  # the instruction
        await anext(it)  # the reply
        yield b"ok"

    return grpc.stream_stream_rpc_method_handler(connect)


def _serve(pki_dir: str, size: int, port: Any, ready: MpEvent, done: MpEvent) -> None:
    import grpc

    from fedge.chunks import FrameLimits
    from fedge.server.service import _aio_server
    from fedge.server.tls import server_credentials

    async def main() -> None:
        server = await _aio_server(FrameLimits().max_frame_bytes)  # fedge's own server settings
        connect = {"Connect": _handler(os.urandom(size))}
        handlers = grpc.method_handlers_generic_handler("bench.Floor", connect)
        server.add_generic_rpc_handlers((handlers,))
        port.value = server.add_secure_port("127.0.0.1:0", server_credentials(Path(pki_dir)))
        await server.start()
        ready.set()
        await asyncio.get_running_loop().run_in_executor(None, done.wait)
        await server.stop(0)

    raise_nofile()
    asyncio.run(main())


def _devices(*args: Any) -> None:
    """Process entry point: :func:`_run_devices` on an event loop of its own."""
    raise_nofile()
    asyncio.run(_run_devices(*args))


async def _run_devices(
    port: int,
    ca: bytes,
    identities: list[VirtualIdentity],
    active: int,
    size: int,
    connected: Any,
    go: MpEvent,
) -> None:
    """Connect every identity's channel; then the first ``active`` of them do the exchange."""
    import grpc

    from fedge.client.wire import CHANNEL_OPTIONS

    reply = os.urandom(size)
    # A device's channel settings, one connection per channel (as bench/fleet_load.py's devices).
    options = [
        *CHANNEL_OPTIONS,
        ("grpc.ssl_target_name_override", "localhost"),
        ("grpc.use_local_subchannel_pool", 1),
    ]
    channels = [
        grpc.aio.secure_channel(
            f"127.0.0.1:{port}", grpc.ssl_channel_credentials(ca, i.tls_key_pem, i.cert_pem), options=options
        )
        for i in identities
    ]
    for channel in channels:
        await channel.channel_ready()
        with connected.get_lock():
            connected.value += 1
    await asyncio.get_running_loop().run_in_executor(None, go.wait)

    async def one(channel: Any) -> None:
        outbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        outbox.put_nowait(b"hello")

        async def requests() -> Any:
            while (item := await outbox.get()) is not None:
                yield item

        async for message in channel.stream_stream(METHOD)(requests()):
            outbox.put_nowait(reply if len(message) > 2 else None)

    await asyncio.gather(*(one(channel) for channel in channels[:active]))
    for channel in channels:
        await channel.close()


def measure(n: int, size: int, processes: int, pki_dir: Path, active: int | None = None) -> dict[str, Any]:
    """One round against a fresh server on ``pki_dir`` (CA and server certificate).

    ``n`` channels connect; ``active`` of them (all by default) then do the exchange while the
    rest stay connected and idle, as a fleet's unsampled devices do.
    """
    active = n if active is None else min(active, n)
    ctx = mp.get_context("spawn")
    ready, done, go = ctx.Event(), ctx.Event(), ctx.Event()
    port, connected = ctx.Value("i", 0), ctx.Value("i", 0)
    server = ctx.Process(target=_serve, args=(str(pki_dir), size, port, ready, done), daemon=True)
    server.start()
    try:
        if not ready.wait(60):
            raise RuntimeError("the bare gRPC server did not start")
        identities = issue_fleet(pki_dir, n, prefix="floor")
        ca = (pki_dir / "ca.pem").read_bytes()
        workers = [
            ctx.Process(
                target=_devices,
                args=(
                    port.value,
                    ca,
                    identities[w::processes],
                    _share(active, processes, w),
                    size,
                    connected,
                    go,
                ),
                daemon=True,
            )
            for w in range(processes)
        ]
        for worker in workers:
            worker.start()
        deadline = time.monotonic() + max(60.0, n / 20)
        while connected.value < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{connected.value} of {n} streams connected")
            time.sleep(0.1)
        time.sleep(1.0)  # let the connect storm settle
        proc = psutil.Process(server.pid)
        before = proc.cpu_times()
        started = time.monotonic()
        go.set()
        for worker in workers:
            worker.join()
        wall = time.monotonic() - started
        after = proc.cpu_times()
        cpu = after.user + after.system - before.user - before.system
        return {
            "connected": n,
            "active": active,
            "bytes": size,
            "round_s": round(wall, 2),
            "server_cpu_s": round(cpu, 2),
            "server_cpu_ms_per_active": round(1000 * cpu / active, 2),
        }
    finally:
        done.set()
        server.join(timeout=10)
        if server.is_alive():
            server.kill()


def _share(total: int, parts: int, index: int) -> int:
    """``index``'s part of ``total`` split as evenly as ``identities[index::parts]`` splits a list."""
    return total // parts + (1 if index < total % parts else 0)


def floor(n: int, size: int = MODEL_BYTES, processes: int = 2, active: int | None = None) -> dict[str, Any]:
    """:func:`measure` with a PKI of its own (a CA and a server certificate, in a temp dir)."""
    from fedge.security import init_pki, issue_server

    with tempfile.TemporaryDirectory(prefix="grpc-floor-") as tmp:
        pki = Path(tmp) / "pki"
        init_pki(pki)
        issue_server(pki, "localhost", ["127.0.0.1"])
        return measure(n, size, processes, pki, active)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", default="100,1000", help="stream counts, comma-separated")
    parser.add_argument("--bytes", type=int, default=MODEL_BYTES, help="message size each way")
    parser.add_argument("--processes", type=int, default=2, help="client processes")
    parser.add_argument("--active", type=int, help="streams that do the exchange (default: all)")
    args = parser.parse_args()
    raise_nofile()
    for n in (int(x) for x in args.devices.split(",")):
        print(json.dumps(floor(n, args.bytes, args.processes, args.active)), flush=True)


if __name__ == "__main__":
    main()
