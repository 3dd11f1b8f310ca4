"""The TCP impairment proxy on its own: a loopback echo server behind it, no root needed."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from fedge.sim.impair import Impairment, ProxyThread


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
    "kwargs", [{"delay": -1.0}, {"loss": 1.0}, {"reset": -0.1}, {"mss": 0}, {"jitter": -0.5}]
)
def test_impairment_values_are_checked(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Impairment(**kwargs)  # type: ignore[arg-type]
