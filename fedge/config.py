"""Typed configuration for the server and the edge daemon, loaded from TOML.

Flags given on the command line override the file; unknown keys are an error (a typo in a
config file should never be silently ignored on a device nobody is watching): the one rule of
:mod:`fedge.fields`, which loads every settings mapping in fedge.
"""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from fedge import fields
from fedge.errors import FedgeError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    T = TypeVar("T", bound=DataclassInstance)
else:
    T = TypeVar("T")


@dataclass
class ServerConfig:
    """``fedge server start``: where to listen and where to keep state."""

    address: str = "127.0.0.1:9092"
    state_dir: str = "fedge-state/server"
    insecure: bool = False
    # Seconds between heartbeats on every device stream, both ways. An idle fleet costs the server
    # a little per heartbeat frame, so its idle CPU scales with devices / interval; a device's
    # signals (charging, idle, unmetered) are as fresh as its last heartbeat.
    heartbeat_interval: float = 15.0
    # A node silent for this long is treated as gone (its pending messages fail); 0 derives it
    # from the interval (see liveness_timeout).
    node_timeout: float = 0.0
    # How long a run may wait for enough nodes before it fails (Flower's sampling waits forever).
    node_wait_timeout: float = 120.0
    # mTLS (the default): the fedge PKI directory (`fedge pki init`) with server.pem/key and ca.pem.
    pki_dir: str = ""
    # TLS-only listener for `fedge client enroll` (empty: enrollment off).
    enroll_address: str = ""
    # Frame limits per device stream (a violation closes that stream, see fedge.chunks).
    max_frame_bytes: int = 16 * 1024 * 1024
    max_message_bytes: int = 1024 * 1024 * 1024
    max_inflight_bytes: int = 1024 * 1024 * 1024
    # Bytes of partial messages held across all devices at once (a stream that would pass it is
    # closed as a violation); room for four devices' full per-stream allowance.
    max_total_inflight_bytes: int = 4 * 1024 * 1024 * 1024
    # Fleet streams held at once (one more is refused; each is a coroutine, ~tens of KB), and how
    # long a new stream may take to send Hello before it is cancelled.
    max_streams: int = 20_000
    hello_timeout: float = 10.0
    # Enrollment: this many failed attempts from one source address or for one device name lock
    # that source/name out for enroll_lockout seconds, doubling with each further failure.
    enroll_max_failures: int = 5
    enroll_lockout: float = 30.0
    # Prometheus /metrics over plain HTTP, HOST:PORT ("" = off; port 0 = any free port, written to
    # <state_dir>/metrics_address). Series: fedge.server.metrics.
    metrics_address: str = ""
    # Where the run's central evaluation computes: auto (CUDA, then MPS, then CPU), cpu, cuda[:i],
    # mps (fedge.accel). Aggregation always stays on the CPU.
    device: str = "auto"

    def liveness_timeout(self) -> float:
        """Seconds of silence after which a device is gone: ``node_timeout``, or four heartbeat
        intervals when it is 0, so that raising the interval never declares live devices dead."""
        return self.node_timeout if self.node_timeout > 0 else 4 * self.heartbeat_interval


@dataclass
class EdgeConfig:
    """``fedge client start``: which server, which identity, which private data."""

    server: str = "127.0.0.1:9092"
    name: str = ""
    state_dir: str = "fedge-state/edge"
    insecure: bool = False
    # TLS name to expect in the server certificate when it differs from the address host.
    server_name: str = ""
    client_app: str = "fedge.client.app:app"
    app_dir: str = "."
    # Flower node config: e.g. data-path, label-column, partition-id, num-partitions.
    node_config: dict[str, bool | int | float | str] = field(default_factory=dict)
    # torch intra-op threads; 1 suits small devices and many daemons sharing a machine.
    threads: int = 1
    backoff_initial: float = 0.25
    backoff_max: float = 5.0
    # EdgeInference (fedge.client.inference): local address ("" = off; port 0 = any free port,
    # written to <state_dir>/inference_address); non-loopback needs inference_tls_dir (mTLS:
    # server.pem, server.key and the ca.pem that callers' certificates must come from).
    inference_address: str = "127.0.0.1:0"
    inference_tls_dir: str = ""
    # Per Predict request: most samples, and most bytes (gRPC refuses a larger message before
    # reading it, so one request cannot make the daemon allocate more).
    max_predict_rows: int = 1024
    max_predict_bytes: int = 4 * 1024 * 1024
    # Prometheus /metrics over plain HTTP, HOST:PORT ("" = off; port 0 = any free port, written to
    # <state_dir>/metrics_address). Series: fedge.client.metrics.
    metrics_address: str = ""
    # Where training and evaluation compute: auto (CUDA, then MPS, then CPU), cpu, cuda[:i], mps.
    device: str = "auto"
    # Largest instruction accepted from the server (reassembled on disk under <state_dir>/spool).
    max_message_bytes: int = 1024 * 1024 * 1024
    # Operator tags reported at Hello, e.g. ["region=eu", "tier=gateway"]: runs select by them
    # (`fedge run start --select region=eu`; fedge.eligibility).
    tags: list[str] = field(default_factory=list)
    # Where the dynamic signals (charging, idle, unmetered) come from, read before every train
    # task and heartbeat (fedge.client.properties): a JSON file, or a command printing that JSON.
    # Neither: every signal is "unknown" (and a run that requires one never samples this device).
    signals_file: str = ""
    signals_command: str = ""


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file, turning every failure into an actionable ``FedgeError``."""
    p = Path(path)
    if not p.is_file():
        raise FedgeError(f"config file not found: {p}", "check the --config path")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise FedgeError(f"malformed TOML in {p}: {exc}", "fix the syntax at the line shown") from None
    except UnicodeDecodeError:
        raise FedgeError(f"config file {p} is not UTF-8 text", "save it as UTF-8") from None


def build(cls: type[T], data: dict[str, Any], overrides: dict[str, Any], source: str) -> T:
    """Merge file values and flag overrides (``None`` = not given) into dataclass ``cls``.

    Unknown keys and wrong types are errors (:func:`fedge.fields.load`).
    """
    flags = {attr.replace("_", "-"): value for attr, value in overrides.items() if value is not None}
    return fields.load(cls, {**data, **flags}, source)


def load(cls: type[T], path: str | None, section: str, overrides: dict[str, Any]) -> T:
    """Load ``[section]`` of the TOML at ``path`` (if given) into ``cls`` with flag overrides."""
    data: dict[str, Any] = {}
    if path:
        doc = load_toml(path)
        data = doc.get(section, doc)
        if not isinstance(data, dict):
            raise FedgeError(f"[{section}] in {path} must be a table", f"write it as [{section}]")
    return build(cls, data, overrides, path or "flags")


def split_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` → (host, port) with a clear error for anything else."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise FedgeError(f"invalid address '{address}'", "use HOST:PORT, e.g. 127.0.0.1:9092")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    """True for localhost and 127.0.0.0/8 / ::1: the only places plaintext is allowed."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_insecure_allowed(
    address: str, insecure: bool, tls_ready: bool = False, tls_hint: str = "configure mTLS"
) -> None:
    """mTLS unless ``--insecure``; plaintext needs that explicit flag and a loopback address."""
    host, _ = split_address(address)
    if not insecure:
        if tls_ready:
            return
        raise FedgeError(
            f"no TLS credentials configured for {address}",
            f"{tls_hint}, or pass --insecure for a local plaintext test federation (loopback only)",
        )
    if not is_loopback(host):
        raise FedgeError(
            f"--insecure refused on non-loopback address {host}",
            "plaintext is only allowed on 127.0.0.1/localhost; use mTLS for real networks",
        )


def parse_assignments(items: list[str] | None, what: str = "--set") -> dict[str, bool | int | float | str]:
    """``["a=1", "b=x"]`` → ``{"a": 1, "b": "x"}`` with Flower-style value typing."""
    out: dict[str, bool | int | float | str] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise FedgeError(f"{what} expects key=value, got '{item}'", f"write e.g. {what} lr=0.05")
        out[key.strip()] = parse_scalar(raw.strip())
    return out


def parse_scalar(raw: str) -> bool | int | float | str:
    """Type a string the way a TOML value would be: bool, int, float, else string."""
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    for conv in (int, float):
        try:
            return conv(raw)
        except ValueError:
            pass
    return raw.strip('"')
