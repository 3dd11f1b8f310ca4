"""A load generator that speaks the real Fleet protocol: N virtual devices, a few processes.

    python bench/fleet_load.py --server HOST:PORT --pki-dir DIR -n 10000 [--processes 4]

Each virtual device has its own certificate and keys (a TLS key and an Ed25519 signing key in a
device certificate, as enrollment would issue), holds one mTLS Fleet stream with heartbeats, and
answers every instruction with a correctly sealed reply: the instruction's arrays sent back
unchanged (a zero update) and ``num-examples``. No torch: a device is a coroutine, a channel and
a few small objects, so 10,000 of them and the server fit on a 2-core machine.

Certificates are made by :func:`issue_fleet`, a bench-only shortcut around enrollment that uses
the same PKI code (``fedge.security``: ``build_leaf`` with the device profile and the CA's key)
but skips the token and the ``issued.json`` record, which would make issuing 10,000 quadratic.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing as mp
import os
import queue
import random
import resource
import signal
import sys
import time
from dataclasses import dataclass
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cryptography.hazmat.primitives.serialization import (  # noqa: E402
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from fedge.security._state import Pki  # noqa: E402
from fedge.security._x509 import (  # noqa: E402
    CLIENT_AUTH,
    build_leaf,
    cert_pem,
    identity_san,
    new_signing_key,
    new_tls_key,
    signing_key_extension,
    utc,
)

HEARTBEAT = 5.0  # until the Welcome says otherwise
REPORT_EVERY = 0.5  # seconds between a worker's status messages


@dataclass(frozen=True)
class VirtualIdentity:
    """One virtual device's credentials, in memory (PEM/raw bytes travel to worker processes)."""

    name: str
    cert_pem: bytes
    tls_key_pem: bytes
    signing_key: bytes  # raw Ed25519 private key


def issue_fleet(pki_dir: Path, count: int, prefix: str = "vdev") -> list[VirtualIdentity]:
    """``count`` device identities signed by the PKI's CA (about 1 ms each)."""
    ca, ca_key = Pki.open(pki_dir)._ca()
    now = utc()
    out: list[VirtualIdentity] = []
    for i in range(count):
        name = f"{prefix}-{i:05d}"
        tls, signing = new_tls_key(), new_signing_key()
        cert = build_leaf(
            ca,
            ca_key,
            tls.public_key(),
            name,
            now=now,
            days=1,
            purposes=[CLIENT_AUTH],
            sans=[identity_san(name)],
            extra=[signing_key_extension(signing.public_key())],
        )
        out.append(
            VirtualIdentity(
                name,
                cert_pem(cert),
                tls.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()),
                signing.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()),
            )
        )
    return out


def raise_nofile() -> int:
    """Soft open-files limit up to the hard one (a stream is a socket); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard != resource.RLIM_INFINITY:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


class FleetLoad:
    """Runs virtual devices in ``processes`` worker processes; counts what they report."""

    def __init__(
        self, server: str, pki_dir: Path, count: int, processes: int = 2, prefix: str = "vdev"
    ) -> None:
        self.server, self.pki_dir, self.count = server, Path(pki_dir), count
        self.processes = max(1, min(processes, count))
        self.prefix = prefix
        self._ctx = mp.get_context("spawn")  # the parent may hold gRPC state a fork must not copy
        self._status: Any = self._ctx.Queue()
        self._stop: MpEvent = self._ctx.Event()
        self._procs: list[Any] = []
        self._counts: dict[int, tuple[int, int, int]] = {}  # worker → (connected, replies, failed)

    def start(self) -> None:
        """Issue the identities and start the workers (they connect in the background)."""
        identities = issue_fleet(self.pki_dir, self.count, self.prefix)
        ca = (self.pki_dir / "ca.pem").read_bytes()
        for w in range(self.processes):
            share = identities[w :: self.processes]
            proc = self._ctx.Process(
                target=_worker, args=(w, self.server, ca, share, self._status, self._stop), daemon=True
            )
            proc.start()
            self._procs.append(proc)

    def _drain(self) -> None:
        while True:
            try:
                worker, connected, replies, failed = self._status.get_nowait()
            except queue.Empty:
                return
            self._counts[worker] = (connected, replies, failed)

    @property
    def connected(self) -> int:
        self._drain()
        return sum(c for c, _, _ in self._counts.values())

    @property
    def replies(self) -> int:
        self._drain()
        return sum(r for _, r, _ in self._counts.values())

    @property
    def failed(self) -> int:
        """Streams that ended (refused, dropped or failed to connect); each device then retries."""
        self._drain()
        return sum(f for _, _, f in self._counts.values())

    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    def wait_connected(self, count: int, timeout: float) -> float:
        """Seconds until ``count`` devices hold a welcomed stream; raises on timeout or a dead worker."""
        started = time.monotonic()
        while self.connected < count:
            if time.monotonic() - started > timeout or any(not p.is_alive() for p in self._procs):
                raise RuntimeError(
                    f"{self.connected} of {count} virtual devices connected ({self.failed} failed)"
                )
            time.sleep(0.1)
        return time.monotonic() - started

    def stop(self) -> None:
        self._stop.set()
        for proc in self._procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()

    def __enter__(self) -> FleetLoad:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- the worker process -------------------------------------------------------------------------


class _Counters:
    def __init__(self) -> None:
        self.connected = self.replies = self.failed = 0


def _worker(
    worker: int, server: str, ca: bytes, identities: list[VirtualIdentity], status: Any, stop: MpEvent
) -> None:
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    raise_nofile()
    asyncio.run(_run_worker(worker, server, ca, identities, status, stop))


async def _run_worker(
    worker: int, server: str, ca: bytes, identities: list[VirtualIdentity], status: Any, stop: MpEvent
) -> None:
    counters = _Counters()
    tasks = []
    for ident in identities:
        tasks.append(asyncio.create_task(_device(ident, server, ca, counters)))
        await asyncio.sleep(0)  # let earlier devices start their handshakes
    last = None
    while not stop.is_set():
        now = (counters.connected, counters.replies, counters.failed)
        if now != last:
            status.put((worker, *now))
            last = now
        await asyncio.sleep(REPORT_EVERY)
    # Ending 5,000 streams at once: gRPC's request-consuming tasks and our request generators
    # are torn down mid-flight, which asyncio reports one line each; nothing is lost.
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: None)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _device(ident: VirtualIdentity, server: str, ca: bytes, counters: _Counters) -> None:
    """One device: holds its stream, and reconnects after a jittered backoff as a daemon would."""
    backoff = 1.0
    while True:
        if await _session(ident, server, ca, counters):
            backoff = 1.0
        counters.failed += 1
        await asyncio.sleep(random.uniform(0, backoff))
        backoff = min(backoff * 2, 30.0)


async def _session(ident: VirtualIdentity, server: str, ca: bytes, counters: _Counters) -> bool:
    """One stream until it ends; True if it was welcomed."""
    import grpc
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from fedge.client.wire import CHANNEL_OPTIONS, Reassembler, reply_frames
    from fedge.protos.v1 import fleet_pb2, fleet_pb2_grpc

    creds = grpc.ssl_channel_credentials(ca, ident.tls_key_pem, ident.cert_pem)
    key = Ed25519PrivateKey.from_private_bytes(ident.signing_key)
    outbox: asyncio.Queue[Any] = asyncio.Queue()
    outbox.put_nowait(fleet_pb2.EdgeFrame(hello=fleet_pb2.Hello(name=ident.name, version="fleet-load")))

    options = [*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
    welcomed = False
    beats: asyncio.Task[None] | None = None
    try:
        async with grpc.aio.secure_channel(server, creds, options=options) as channel:
            call = fleet_pb2_grpc.FleetStub(channel).Connect(_Requests(outbox))
            reassembler = Reassembler()
            node_id = 0
            async for frame in call:
                kind = frame.WhichOneof("kind")
                if kind == "welcome":
                    node_id, welcomed = frame.welcome.node_id, True
                    counters.connected += 1
                    interval = frame.welcome.heartbeat_interval or HEARTBEAT
                    beats = asyncio.create_task(_heartbeats(outbox, interval))
                elif kind == "instruction":
                    ins = reassembler.add(frame.instruction)
                    if ins is not None:
                        payload = _answer(ins, node_id, key)
                        for out in reply_frames(ins.message_id, payload):
                            outbox.put_nowait(out)
                        counters.replies += 1
    except grpc.RpcError:
        pass
    finally:
        outbox.put_nowait(None)  # ends gRPC's request task, which would otherwise be left pending
        if beats is not None:
            beats.cancel()
        if welcomed:
            counters.connected -= 1
    return welcomed


class _Requests:
    """A stream's outgoing frames, in the order queued; ``None`` ends it.

    An iterator object, not an async generator: when a worker stops with thousands of streams
    open, gRPC's request task is cancelled inside ``__anext__``, and a suspended async generator
    is then finalised while it still runs ("aclose(): asynchronous generator is already running",
    once per stream).
    """

    def __init__(self, outbox: asyncio.Queue[Any]) -> None:
        self._outbox = outbox

    def __aiter__(self) -> _Requests:
        return self

    async def __anext__(self) -> Any:
        frame = await self._outbox.get()
        if frame is None:
            raise StopAsyncIteration
        return frame


async def _heartbeats(outbox: asyncio.Queue[Any], interval: float) -> None:
    from fedge.protos.v1 import fleet_pb2

    await asyncio.sleep(random.uniform(0, interval))  # spread 10,000 devices' beats over the interval
    while True:
        outbox.put_nowait(fleet_pb2.EdgeFrame(heartbeat=fleet_pb2.Heartbeat(sent_at=time.time())))
        await asyncio.sleep(interval)


def _answer(ins: Any, node_id: int, key: Any) -> Any:
    """The reply to one instruction: its arrays back (sealed to the run's key when announced)."""
    from flwr.app import Message, MetricRecord, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from fedge.codec import decode_message, encode_frames
    from fedge.protos.v1 import envelope_pb2
    from fedge.security.seal import seal_record

    msg = decode_message(ins.data)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, msg.metadata.run_id, node_id
    content = RecordDict({"metrics": MetricRecord({"num-examples": 10})})
    for name, record in msg.content.array_records.items():
        content[name] = record
    reply = Message(content, reply_to=msg)
    if ins.announcement:
        ann = envelope_pb2.AggregatorAnnouncement.FromString(ins.announcement)
        for name, record in list(reply.content.array_records.items()):
            sealed = seal_record(
                record,
                announcement=ann,
                run_id=msg.metadata.run_id,
                round=ins.round,
                node_id=node_id,
                stage=reply.metadata.message_type,
                device_key=key,
            )
            del reply.content[name]
            reply.content[name] = sealed
    return encode_frames(reply)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True, help="the Fleet address, HOST:PORT")
    parser.add_argument(
        "--pki-dir", required=True, type=Path, help="the federation's PKI (its CA signs the devices)"
    )
    parser.add_argument("-n", "--devices", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=max(1, (os.cpu_count() or 2)))
    parser.add_argument("--prefix", default="vdev")
    args = parser.parse_args()
    print(f"open files: soft limit {raise_nofile()}")
    load = FleetLoad(args.server, args.pki_dir, args.devices, args.processes, args.prefix)
    started = time.monotonic()
    load.start()
    try:
        while True:
            time.sleep(2)
            print(
                f"{time.monotonic() - started:7.1f} s  connected {load.connected}/{args.devices}"
                f"  replies {load.replies}  ended {load.failed}",
                flush=True,
            )
    except KeyboardInterrupt:
        pass
    finally:
        load.stop()


if __name__ == "__main__":
    main()
