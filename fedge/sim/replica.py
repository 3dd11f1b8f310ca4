"""Entry point of a scaled compose service: find this replica's number, then exec its command.

Why: ``docker compose up --scale edge=N`` starts N identical containers, and Compose gives them
no index variable — only their names, ``<project>-edge-<n>``. Every edge still needs a distinct
identity (device name, enrollment token) and its own data partition. So the edge service's
command is ``python -m fedge.sim.replica --replicas N -- CMD...``: this finds ``n`` (1..N) and
runs CMD with ``{n}`` replaced by it and ``{index}`` by ``n - 1`` (the partition id), e.g.
``--name edge-{n} --node-config partition-id={index}``. It replaces itself with CMD (``exec``),
so CMD gets the container's signals directly.

Where ``n`` comes from, first match wins:

1. ``FEDGE_REPLICA`` in the environment — set it on a real device host, and
   ``fedge simulate --from-compose`` sets it for each replica it starts;
2. the container name: Docker's embedded DNS answers a reverse (PTR) lookup of the container's
   own address with ``<project>-<service>-<n>.<network>``.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import socket
import struct
import sys
from collections.abc import Callable, Mapping, Sequence

from fedge.errors import FedgeError

ENV = "FEDGE_REPLICA"


def container_name(resolv_conf: str = "/etc/resolv.conf", port: int = 53) -> str:
    """This container's name from Docker's DNS, "" if none.

    Asks the resolver of ``/etc/resolv.conf`` (Docker's embedded DNS, 127.0.0.11) for the PTR
    record of the container's own address. Not ``gethostbyaddr``: it reads ``/etc/hosts`` first,
    where Docker maps that address to the container *id*.
    """
    try:
        address = socket.gethostbyname(socket.gethostname())
        with open(resolv_conf, encoding="utf-8") as f:
            servers = re.findall(r"^\s*nameserver\s+(\S+)", f.read(), re.MULTILINE)
        return ptr_lookup(address, servers[0], port) if servers else ""
    except (OSError, ValueError, IndexError, struct.error):
        return ""


def ptr_lookup(address: str, server: str, port: int = 53, timeout: float = 2.0) -> str:
    """The PTR name of IPv4 ``address`` from DNS server ``server`` (one UDP query, no recursion)."""
    qid = secrets.randbits(16)
    labels = [*reversed(address.split(".")), "in-addr", "arpa"]
    question = b"".join(bytes([len(x)]) + x.encode() for x in labels) + b"\0" + struct.pack("!HH", 12, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(struct.pack("!6H", qid, 0x0100, 1, 0, 0, 0) + question, (server, port))
        reply = sock.recv(4096)
    rid, _flags, _qd, answers = struct.unpack("!4H", reply[:8])
    if rid != qid:
        raise ValueError("DNS reply to another query")
    at = 12 + len(question)
    for _ in range(answers):
        _, at = _name(reply, at)
        rtype, _cls, _ttl, length = struct.unpack("!HHIH", reply[at : at + 10])
        at += 10
        if rtype == 12:
            return _name(reply, at)[0]
        at += length
    return ""


def _name(msg: bytes, at: int) -> tuple[str, int]:
    """Decode a (possibly compressed) DNS name at ``at``; returns it and the offset after it."""
    labels, end, hops = [], None, 0
    while msg[at]:
        if msg[at] & 0xC0 == 0xC0:  # pointer to an earlier name
            end = at + 2 if end is None else end
            at, hops = struct.unpack("!H", msg[at : at + 2])[0] & 0x3FFF, hops + 1
            if hops > 32:
                raise ValueError("DNS name pointer loop")
            continue
        labels.append(msg[at + 1 : at + 1 + msg[at]].decode("ascii", "replace"))
        at += 1 + msg[at]
    return ".".join(labels), (at + 1 if end is None else end)


def replica_number(env: Mapping[str, str], lookup: Callable[[], str] = container_name) -> int:
    """This replica's number, 1-based (see the module docstring)."""
    text = env.get(ENV, "").strip()
    if text:
        if not text.isdigit() or int(text) < 1:
            raise FedgeError(f"{ENV}={text!r} is not a replica number", f"set {ENV} to 1, 2, 3, ...")
        return int(text)
    name = lookup()
    m = re.search(r"[-_](\d+)$", name.split(".")[0])
    if not m or int(m.group(1)) < 1:
        raise FedgeError(
            f"cannot tell which replica this is (container name {name or 'unknown'!r})",
            f"run it as a compose service (names end in -<n>), or set {ENV}=<n>",
        )
    return int(m.group(1))


def expand(argv: Sequence[str], number: int) -> list[str]:
    """Replace ``{n}`` (replica number) and ``{index}`` (``n - 1``) in every argument."""
    return [a.replace("{n}", str(number)).replace("{index}", str(number - 1)) for a in argv]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fedge.sim.replica", description=__doc__.split("\n")[0])
    parser.add_argument("--replicas", type=int, required=True, help="how many replicas exist (N)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS... ({n}, {index})")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    try:
        if not command:
            raise FedgeError("no command to run", "append -- CMD ARGS...")
        number = replica_number(os.environ)
        if not 1 <= number <= args.replicas:
            raise FedgeError(
                f"this is replica {number} but only {args.replicas} are configured",
                "set FEDGE_EDGES to the --scale count (each replica needs its own token and partition)",
            )
    except FedgeError as exc:
        print(f"error: {exc.message}\nhint: {exc.hint}", file=sys.stderr)
        raise SystemExit(2) from None
    final = expand(command, number)
    print(
        f"replica {number} of {args.replicas}: {{n}}={number} {{index}}={number - 1}",
        file=sys.stderr,
        flush=True,
    )
    os.execvp(final[0], final)


if __name__ == "__main__":
    main()
