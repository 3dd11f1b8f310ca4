"""The TCP impairment proxy on its own: a loopback echo server behind it, no root needed."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from fedge.sim.impair import Impairment, ProxyThread
from fedge.sim.netem import NetemSpec


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    """A threaded echo server on 127.0.0.1 that half-closes after its peer does."""
    srv = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
                conn.shutdown(socket.SHUT_WR)
            except ConnectionError:
                pass  # the proxy reset the connection (the reset test)

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield srv.getsockname()[:2]
    stop.set()
    thread.join(2)
    srv.close()


@pytest.fixture
def proxies() -> Iterator[ProxyThread]:
    with ProxyThread() as thread:
        yield thread


def _connect(address: str) -> socket.socket:
    host, port = address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def _roundtrip(sock: socket.socket, payload: bytes) -> bytes:
    """Send everything, half-close, read until the echo server closes."""
    sender = threading.Thread(target=lambda: (sock.sendall(payload), sock.shutdown(socket.SHUT_WR)))
    sender.start()
    chunks = []
    while data := sock.recv(65536):
        chunks.append(data)
    sender.join()
    return b"".join(chunks)


def test_bytes_pass_unchanged_and_in_order_under_jitter(echo: tuple[str, int], proxies: ProxyThread) -> None:
    address, proxy = proxies.add(("127.0.0.1", 0), echo, Impairment(delay=0.005, jitter=0.004), seed=1)
    payload = os.urandom(3 * 1024 * 1024)
    with _connect(address) as sock:
        assert _roundtrip(sock, payload) == payload
    assert proxy.stats.connections == 1
    assert proxy.stats.bytes_up == proxy.stats.bytes_down == len(payload)


def test_delay_applies_to_each_direction(echo: tuple[str, int], proxies: ProxyThread) -> None:
    delay = 0.08
    address, _ = proxies.add(("127.0.0.1", 0), echo, Impairment(delay=delay))
    with _connect(address) as sock:
        for _ in range(3):
            start = time.monotonic()
            sock.sendall(b"ping")
            assert sock.recv(16) == b"ping"
            assert time.monotonic() - start >= 2 * delay  # up and down are each delayed


def test_rate_limits_what_crosses_the_link(echo: tuple[str, int], proxies: ProxyThread) -> None:
    """Where no qdisc can shape (the compose sidecar), the proxy itself is the bottleneck link."""
    rate = 4_000_000  # bit/s: 100 kB take at least 0.2 s to cross in each direction
    address, proxy = proxies.add(("127.0.0.1", 0), echo, Impairment(rate=rate))
    payload = os.urandom(100_000)
    with _connect(address) as sock:
        start = time.monotonic()
        assert _roundtrip(sock, payload) == payload
        assert time.monotonic() - start >= len(payload) * 8 / rate
    assert proxy.stats.bytes_up == proxy.stats.bytes_down == len(payload)


def test_the_netem_profile_gives_the_proxy_the_rate_only_where_asked() -> None:
    spec = NetemSpec.parse("delay=100ms jitter=20ms loss=2% rate=1mbit")
    assert spec.impairment().rate == 0  # simulate --netem: tbf shapes the rate in the kernel
    assert spec.impairment(with_rate=True) == Impairment(delay=0.1, jitter=0.02, loss=0.02, rate=1e6)


def _sidecar(*args: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "fedge.sim.impair_sidecar", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_the_sidecar_forwards_through_the_profile_and_reports_its_counters(echo: tuple[str, int]) -> None:
    proc = _sidecar("--netem", "delay=5ms rate=8mbit", "--forward", f"127.0.0.1:0={echo[0]}:{echo[1]}")
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        m = re.match(r"impair: 127\.0\.0\.1:(\d+) -> 127\.0\.0\.1:\d+ \(delay=5ms rate=8mbit\)$", first)
        assert m, first + (proc.stderr.read() if proc.poll() is not None and proc.stderr else "")
        payload = os.urandom(64 * 1024)
        with _connect(f"127.0.0.1:{m.group(1)}") as sock:
            assert _roundtrip(sock, payload) == payload
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    last = out.strip().splitlines()[-1]
    assert last == (
        f"impair 127.0.0.1:{m.group(1)} -> {echo[0]}:{echo[1]}: 1 connections, {len(payload)} bytes up, "
        f"{len(payload)} bytes down, 0 losses, 0 resets, 0 connect errors"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--netem", "delay=fast", "--forward", "127.0.0.1:0=server:9092"], "--netem delay='fast'"),
        (["--netem", "delay=5ms", "--forward", "127.0.0.1:0"], "has no '='"),
        (["--netem", "delay=5ms", "--forward", "0.0.0.0:9092=server"], "is not LISTEN=TARGET"),
    ],
)
def test_the_sidecar_refuses_bad_input_with_a_hint(args: list[str], message: str) -> None:
    proc = _sidecar(*args)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 2 and out == ""
    assert message in err and "hint: " in err and "Traceback" not in err


def test_a_lost_segment_costs_a_retransmission_timeout(echo: tuple[str, int], proxies: ProxyThread) -> None:
    rto = 0.15
    address, proxy = proxies.add(("127.0.0.1", 0), echo, Impairment(loss=0.999, rto=rto), seed=3)
    with _connect(address) as sock:
        start = time.monotonic()
        sock.sendall(b"x" * 100)
        got = b""
        while len(got) < 100:
            got += sock.recv(100)
        assert time.monotonic() - start >= 2 * rto
    assert proxy.stats.losses >= 2


def test_reset_aborts_the_connection_for_both_peers(echo: tuple[str, int], proxies: ProxyThread) -> None:
    address, proxy = proxies.add(("127.0.0.1", 0), echo, Impairment(reset=0.999), seed=4)
    with _connect(address) as sock:
        sock.sendall(b"hello")
        with pytest.raises(ConnectionResetError):
            sock.recv(16)
    assert proxy.stats.resets == 1


def test_an_unreachable_target_resets_the_client(proxies: ProxyThread) -> None:
    with socket.create_server(("127.0.0.1", 0)) as tmp:
        dead = tmp.getsockname()[:2]
    address, proxy = proxies.add(("127.0.0.1", 0), dead, Impairment())
    with pytest.raises(ConnectionResetError):  # at connect or at the first read, whichever is first
        with _connect(address) as sock:
            sock.sendall(b"x")
            sock.recv(16)
    assert proxy.stats.errors and "connect" in proxy.stats.errors[0]


def test_many_connections_and_close_cuts_them(echo: tuple[str, int]) -> None:
    thread = ProxyThread()
    address, proxy = thread.add(("127.0.0.1", 0), echo, Impairment(delay=0.001))
    socks = [_connect(address) for _ in range(20)]
    for i, sock in enumerate(socks):
        sock.sendall(str(i).encode())
    assert [s.recv(16) for s in socks] == [str(i).encode() for i in range(20)]
    thread.close()
    thread.close()  # idempotent
    for sock in socks:
        sock.settimeout(5)
        assert sock.recv(16) == b""  # the proxy went away: the peer sees the connection end
        sock.close()
    assert proxy.stats.connections == 20


@pytest.mark.parametrize(
    "kwargs", [{"delay": -1.0}, {"loss": 1.0}, {"reset": -0.1}, {"mss": 0}, {"jitter": -0.5}, {"rate": -1.0}]
)
def test_impairment_values_are_checked(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Impairment(**kwargs)  # type: ignore[arg-type]
