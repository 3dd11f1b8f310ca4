"""``fedge simulate --netem``: every daemon behind a really impaired network link.

Why this shape: a daemon must see a flaky network exactly as on a device — its own interface,
a slow link, late and lost data — while the server and the run stay untouched. The kernels
fedge is tested on have ``tbf`` but no ``netem`` qdisc, so the link is built from two parts:

- **rate** (kernel): each daemon runs in its own network namespace, joined to the host by a
  veth pair with a ``tbf`` token bucket on both ends (uplink and downlink each get ``rate``);
- **delay, jitter, loss, resets** (user space): the daemon dials the server through a
  :mod:`fedge.sim.impair` proxy listening on the host end of its veth pair.

Needs root (namespaces, veth, qdiscs); without it :func:`check_can_impair` says so. Docker
hosts have ``tc netem``: the compose ``netem`` profile passes :meth:`NetemSpec.tc_netem_args`
to it instead.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any

from fedge.config import split_address
from fedge.errors import FedgeError
from fedge.sim.impair import Impairment, ImpairmentProxy, ProxyThread

_TIME = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
_RATE: dict[str, float] = {
    "bit": 1,
    "kbit": 1e3,
    "mbit": 1e6,
    "gbit": 1e9,
    "bps": 8,
    "kbps": 8e3,
    "mbps": 8e6,
}
_HINT = (
    'use e.g. --netem "delay=100ms jitter=20ms loss=2% rate=1mbit" (keys: delay jitter loss reset rate rto)'
)
_NS_PREFIX = "fedge-"
TBF_LATENCY = "400ms"


@dataclass(frozen=True)
class NetemSpec:
    """A link profile: ``delay``/``jitter``/``rto`` in seconds, ``loss``/``reset`` as probabilities
    (per 1448-byte segment), ``rate`` in bits per second (0: unlimited)."""

    delay: float = 0.0
    jitter: float = 0.0
    loss: float = 0.0
    reset: float = 0.0
    rate: int = 0
    rto: float = 0.2

    @classmethod
    def parse(cls, text: str) -> NetemSpec:
        """``"delay=100ms jitter=20ms loss=2% rate=1mbit"`` (spaces or commas between items)."""
        values: dict[str, Any] = {}
        for item in re.split(r"[\s,]+", text.strip()):
            if not item:
                continue
            key, sep, value = item.partition("=")
            if not sep or key not in ("delay", "jitter", "loss", "reset", "rate", "rto"):
                raise FedgeError(f"invalid --netem item {item!r}", _HINT)
            if key in values:
                raise FedgeError(f"--netem sets {key} twice", _HINT)
            if key in ("delay", "jitter", "rto"):
                values[key] = _parse(value, _TIME, key, "a time such as 100ms or 0.1s")
            elif key == "rate":
                values[key] = round(_parse(value, _RATE, key, "a rate such as 1mbit or 500kbit"))
            else:
                values[key] = _percent(value, key)
        if not values:
            raise FedgeError("--netem is empty", _HINT)
        spec = cls(**values)
        if spec.rate and spec.rate < 8000:
            raise FedgeError(f"--netem rate {spec.rate} bit/s is below what tbf can shape", "use ≥ 8kbit")
        return spec

    def impairment(self, with_rate: bool = False) -> Impairment:
        """The proxy's share of the profile: everything but the rate, which ``tbf`` shapes in the
        kernel, unless ``with_rate`` (a proxy where no qdisc can be set limits the rate itself)."""
        return Impairment(
            delay=self.delay,
            jitter=self.jitter,
            loss=self.loss,
            reset=self.reset,
            rate=self.rate if with_rate else 0.0,
            rto=self.rto,
        )

    def tc_netem_args(self) -> list[str]:
        """The same profile for real ``tc qdisc add dev eth0 root netem …`` (resets have no tc form)."""
        args: list[str] = []
        if self.delay or self.jitter:
            args += ["delay", _ms(self.delay)] + ([_ms(self.jitter)] if self.jitter else [])
        if self.loss:
            args += ["loss", f"{self.loss * 100:g}%"]
        if self.rate:
            args += ["rate", _rate(self.rate)]
        return args

    def __str__(self) -> str:
        parts = [f"{k}={_ms(v)}" for k, v in (("delay", self.delay), ("jitter", self.jitter)) if v]
        parts += [f"{k}={v * 100:g}%" for k, v in (("loss", self.loss), ("reset", self.reset)) if v]
        return " ".join(parts + ([f"rate={_rate(self.rate)}"] if self.rate else []))


def _parse(value: str, units: dict[str, float], key: str, what: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([a-z]+)", value.strip().lower())
    if not m or m.group(2) not in units:
        raise FedgeError(f"--netem {key}={value!r} is not {what}", _HINT)
    return float(m.group(1)) * units[m.group(2)]


def _percent(value: str, key: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)%", value.strip())
    if not m or float(m.group(1)) >= 100:
        raise FedgeError(f"--netem {key}={value!r} is not a percentage below 100%", _HINT)
    return float(m.group(1)) / 100


def _rate(bits: int) -> str:
    for unit, size in (("gbit", 10**9), ("mbit", 10**6), ("kbit", 10**3)):
        if bits % size == 0:
            return f"{bits // size}{unit}"
    return f"{bits}bit"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:g}ms"


def check_can_impair() -> None:
    """Fail clearly, before anything starts, where namespaces cannot be made."""
    if os.geteuid() != 0:
        raise FedgeError(
            "--netem needs root: it puts each daemon in its own network namespace "
            "(ip netns, a veth pair, tbf for the rate)",
            "run fedge simulate as root (e.g. with sudo), or drop --netem",
        )
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        raise FedgeError(
            f"--netem needs {' and '.join(missing)} (iproute2)",
            "install iproute2, e.g. apt-get install iproute2",
        )


@dataclass
class ImpairedLink:
    """One daemon's impaired link: its namespace, and the address it dials instead of the server."""

    netns: str
    host_ip: str
    edge_ip: str
    address: str = ""
    proxy: ImpairmentProxy | None = field(default=None, repr=False)

    @property
    def wrap(self) -> list[str]:
        """Command prefix that runs a process inside this link's namespace."""
        return ["ip", "netns", "exec", self.netns]


class ImpairedNetwork:
    """``count`` impaired links to ``target`` (the server's ``host:port``); a context manager."""

    def __init__(self, spec: NetemSpec, count: int, target: str, seed: int = 0) -> None:
        self.spec, self.count, self.seed = spec, count, seed
        host, port = split_address(target)
        self.target = (host, port)
        self.links: list[ImpairedLink] = []
        self._token = secrets.token_hex(3)
        self._proxies: ProxyThread | None = None

    def __enter__(self) -> ImpairedNetwork:
        check_can_impair()
        _remove_stale_namespaces()
        self._proxies = ProxyThread()
        try:
            subnet = _free_subnet()
            for i in range(self.count):
                self._add_link(i, subnet)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _add_link(self, i: int, subnet: int) -> None:
        if i >= 16384:
            raise FedgeError("--netem supports at most 16384 daemons", "use fewer --clients")
        base = i * 4
        prefix = f"10.{subnet}.{base // 256}."
        link = ImpairedLink(f"{_NS_PREFIX}{os.getpid()}-{self._token}-{i}", prefix + str(base % 256 + 1), "")
        link.edge_ip = prefix + str(base % 256 + 2)
        host_dev, edge_dev = f"fg{self._token}h{i}", f"fg{self._token}e{i}"
        _ip("netns", "add", link.netns)
        self.links.append(link)  # from here on, close() removes it
        _ip("link", "add", host_dev, "type", "veth", "peer", "name", edge_dev)
        _ip("link", "set", edge_dev, "netns", link.netns)
        _ip("addr", "add", f"{link.host_ip}/30", "dev", host_dev)
        _ip("link", "set", host_dev, "up")
        _ip("-n", link.netns, "addr", "add", f"{link.edge_ip}/30", "dev", edge_dev)
        _ip("-n", link.netns, "link", "set", edge_dev, "up")
        _ip("-n", link.netns, "link", "set", "lo", "up")  # the daemon's local inference port
        if self.spec.rate:
            _tbf([], host_dev, self.spec.rate)  # downlink: what leaves the host towards the daemon
            _tbf(link.wrap, edge_dev, self.spec.rate)  # uplink
        assert self._proxies is not None
        link.address, link.proxy = self._proxies.add(
            (link.host_ip, 0), self.target, self.spec.impairment(), seed=self.seed * 100_003 + i
        )

    def stats(self) -> list[dict[str, Any]]:
        """Per link: bytes each way, connections, injected losses and resets."""
        out = []
        for link in self.links:
            s = link.proxy.stats if link.proxy else None
            out.append(
                {
                    "netns": link.netns,
                    "address": link.address,
                    "bytes-up": s.bytes_up if s else 0,
                    "bytes-down": s.bytes_down if s else 0,
                    "connections": s.connections if s else 0,
                    "losses": s.losses if s else 0,
                    "resets": s.resets if s else 0,
                    "errors": list(s.errors[-5:]) if s else [],
                }
            )
        return out

    def close(self) -> None:
        """Stop the proxies and delete the namespaces (their veth pairs go with them)."""
        if self._proxies is not None:
            self._proxies.close()
            self._proxies = None
        for link in self.links:
            subprocess.run(["ip", "netns", "del", link.netns], capture_output=True, check=False)
        self.links.clear()


def _ip(*args: str) -> None:
    _run(["ip", *args])


def tbf_burst(rate: int) -> int:
    """Bucket size in bytes: ≥ 2 MTUs and ≥ one 4 ms timer tick of data at ``rate`` bit/s.

    Up to this many bytes may pass at line speed; lower bounds on transfer times subtract it.
    """
    return max(3200, rate // 8 // 250)


def _tbf(wrap: list[str], dev: str, rate: int) -> None:
    shape = ["rate", f"{rate}bit", "burst", str(tbf_burst(rate)), "latency", TBF_LATENCY]
    _run([*wrap, "tc", "qdisc", "add", "dev", dev, "root", "tbf", *shape])


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise FedgeError(
            f"`{' '.join(cmd)}` failed: {proc.stderr.strip() or proc.returncode}",
            "--netem needs network namespaces, veth pairs and the tbf qdisc (root, iproute2)",
        )


def _free_subnet() -> int:
    """A ``10.X.0.0/16`` no route on this host touches (X in 200..254)."""
    routes = subprocess.run(
        ["ip", "-4", "-o", "route", "show", "table", "all"], capture_output=True, text=True
    )
    addrs = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True)
    used = set(re.findall(r"\b10\.(\d+)\.", routes.stdout + addrs.stdout))
    free = [x for x in range(200, 255) if str(x) not in used]
    if not free:
        raise FedgeError("no free 10.x.0.0/16 subnet for --netem links", "remove unused 10.200-254 routes")
    return free[secrets.randbelow(len(free))]


def _remove_stale_namespaces() -> None:
    """Namespaces an earlier ``fedge simulate --netem`` left behind when it was killed (its pid is gone)."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for name in re.findall(rf"^({_NS_PREFIX}(\d+)-[0-9a-f]+-\d+)\b", listing, re.MULTILINE):
        if not os.path.exists(f"/proc/{name[1]}"):
            subprocess.run(["ip", "netns", "del", name[0]], capture_output=True, check=False)
