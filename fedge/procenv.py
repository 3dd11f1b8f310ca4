"""The environment fedge gives the processes it starts (run workers, simulated servers and daemons).

Why: every tensor that arrives is copied once into a fresh multi-megabyte ``bytes`` (Flower's
``Array`` must own its data), and on this class of VM first-touch page faults, not the copy, set
the speed: decoding a 100 MB update runs at ~2 GB/s with glibc's defaults and ~6 GB/s when malloc
backs large blocks with transparent huge pages (``bench/datapath.py`` measures both). glibc reads
its tunables only at process start, so fedge sets them for the children it spawns; deployments
set the same variable in their unit or compose files. An operator's own ``GLIBC_TUNABLES`` wins.

Run workers also get one compute thread per library (torch's OpenMP pool and numpy's OpenBLAS):
the server runs many processes on few cores, where torch's default pool collapses (a local
epoch went from 0.25 s to 12 s), and OpenBLAS threads spin after every call (the float64 dot of
the update screen). OpenBLAS reads its setting when numpy is imported, which a spawned worker
does while unpickling its target, before any code of its own runs: so it is set here, in the
environment the worker inherits. An operator's own values win.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

MALLOC_TUNABLES = "glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=1048576"


def child_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with fedge's malloc tunables added."""
    env = dict(os.environ if base is None else base)
    env.setdefault("GLIBC_TUNABLES", MALLOC_TUNABLES)
    return env


WORKER_THREADS = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def tune_spawned_children() -> None:
    """Make processes started later with ``multiprocessing``'s spawn method (run workers, export
    jobs) inherit the malloc tunables and one compute thread per library."""
    os.environ.setdefault("GLIBC_TUNABLES", MALLOC_TUNABLES)
    for name, value in WORKER_THREADS.items():
        os.environ.setdefault(name, value)
