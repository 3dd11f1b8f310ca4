"""Run a command under the seccomp filters a systemd unit would give it, without systemd.

``python tests/sandbox.py UNIT [--mdwe] -- COMMAND...`` reads ``SystemCallFilter=`` and
``RestrictAddressFamilies=`` from the unit, builds the same filters with libseccomp (the library
systemd itself uses) and execs COMMAND under them; the filters are inherited by every child.

Why: a unit's hardening is only worth shipping if fedge runs under it, and these tests have no
systemd as PID 1 to start units with. The group expansion comes from ``systemd-analyze
syscall-filter``, so the allow-list is this machine's systemd's own. As in systemd: a syscall
outside the list kills the process (SIGSYS), a socket of another family fails with
EAFNOSUPPORT. ``--mdwe`` adds ``MemoryDenyWriteExecute=yes`` (no W+X mapping, no mprotect to X).
"""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess
import sys
from pathlib import Path

ALLOW, KILL_PROCESS = 0x7FFF0000, 0x80000000
MASKED_EQ, EQ, GT = 7, 4, 6
PROT_WRITE, PROT_EXEC, SHM_EXEC = 0x2, 0x4, 0o100000
FAMILIES = {"AF_UNIX": 1, "AF_INET": 2, "AF_INET6": 10, "AF_NETLINK": 16, "AF_PACKET": 17}
AF_MAX = 64


class _Arg(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]


def unit_values(unit: Path, key: str) -> list[str]:
    """Every value of ``key`` in ``unit`` (systemd lists accumulate across repeated keys)."""
    values: list[str] = []
    for line in unit.read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() == key:
            values.extend(value.split())
    return values


def expand(names: list[str]) -> set[str]:
    """Syscall names of ``@group``s and plain names, as this machine's systemd expands them."""
    out: set[str] = set()
    for name in names:
        if not name.startswith("@"):
            out.add(name)
            continue
        listing = subprocess.run(
            ["systemd-analyze", "syscall-filter", name], capture_output=True, text=True, check=True
        ).stdout
        members = [
            ln.strip() for ln in listing.splitlines()[1:] if ln.strip() and not ln.strip().startswith("#")
        ]
        out |= expand(members)
    return out


def main(argv: list[str]) -> None:
    split = argv.index("--")
    options, command = argv[:split], argv[split + 1 :]
    unit = Path(options[0])
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_Arg),
    ]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]

    def rule(ctx: int, action: int, name: str, *conds: tuple[int, int, int, int]) -> None:
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:  # not a syscall on this architecture (e.g. 32-bit variants)
            return
        args = (_Arg * max(len(conds), 1))(*(_Arg(*c) for c in conds))
        if lib.seccomp_rule_add_array(ctx, action, nr, len(conds), args) != 0:
            raise OSError(f"seccomp rule for {name} refused")

    # 1. SystemCallFilter= as an allow-list: everything else kills the process, as in systemd.
    allowed = expand(unit_values(unit, "SystemCallFilter"))
    calls = lib.seccomp_init(KILL_PROCESS)
    for name in sorted(allowed):
        rule(calls, ALLOW, name)
    # 2. RestrictAddressFamilies= (and MemoryDenyWriteExecute=) as an errno filter on top.
    families = {FAMILIES[f] for f in unit_values(unit, "RestrictAddressFamilies")}
    limits = lib.seccomp_init(ALLOW)
    refuse_family = 0x00050000 | errno.EAFNOSUPPORT
    for family in range(AF_MAX):
        if family not in families:
            rule(limits, refuse_family, "socket", (0, EQ, family, 0))
    rule(limits, refuse_family, "socket", (0, GT, AF_MAX - 1, 0))
    if "--mdwe" in options:
        eperm = 0x00050000 | errno.EPERM
        rule(limits, eperm, "mmap", (2, MASKED_EQ, PROT_WRITE | PROT_EXEC, PROT_WRITE | PROT_EXEC))
        rule(limits, eperm, "mprotect", (2, MASKED_EQ, PROT_EXEC, PROT_EXEC))
        rule(limits, eperm, "pkey_mprotect", (2, MASKED_EQ, PROT_EXEC, PROT_EXEC))
        rule(limits, eperm, "shmat", (2, MASKED_EQ, SHM_EXEC, SHM_EXEC))
    for ctx in (limits, calls):  # loading sets no_new_privs, as NoNewPrivileges=yes does
        if lib.seccomp_load(ctx) != 0:
            raise OSError("seccomp_load failed")
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
