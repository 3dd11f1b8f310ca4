"""Who is calling over loopback TCP: the user owning the caller's socket (Linux ``/proc/net``).

Why: the daemon's EdgeInference listens on plaintext loopback, which every local user can reach;
the model is the device owner's, and each request costs the device CPU and memory. The kernel
records the owner of every TCP socket in ``/proc/net/tcp`` and ``tcp6``: the caller's socket is
the one whose local port is the peer port gRPC reports and whose remote port is ours. Only that
user — the daemon's own — (and root, who could read the model anyway) may call.

Where there is no ``/proc/net`` (not Linux) the owner cannot be known and every local caller is
let in, as before; the README says so.
"""

from __future__ import annotations

import os
from pathlib import Path

_TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
_ESTABLISHED = "01"


def peer_port(peer: str) -> int | None:
    """The port of a gRPC peer string (``ipv4:127.0.0.1:5000``, ``ipv6:[::1]:5000``)."""
    _, sep, port = peer.rpartition(":")
    return int(port) if sep and port.isdigit() else None


def socket_owner(local_port: int, remote_port: int) -> int | None:
    """UID owning the established TCP socket ``local_port`` → ``remote_port`` (None: not found)."""
    for table in _TABLES:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 8 or fields[3] != _ESTABLISHED:
                continue
            local, remote = fields[1].rsplit(":", 1)[1], fields[2].rsplit(":", 1)[1]
            if int(local, 16) == local_port and int(remote, 16) == remote_port:
                return int(fields[7])
    return None


def may_call(peer: str, server_port: int) -> bool:
    """Whether the loopback caller ``peer`` is this process's user (or root)."""
    if not any(t.exists() for t in _TABLES):
        return True
    port = peer_port(peer)
    owner = socket_owner(port, server_port) if port is not None else None
    return owner is not None and owner in (0, os.geteuid())
