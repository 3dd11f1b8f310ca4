"""Shared measurement helpers of the benchmarks: one pinned core, medians of repeated calls."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


def pin_one_core() -> int | None:
    """Pin this process to one CPU (the lowest it may use) so figures are per core; None off Linux."""
    try:
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return cpu
    except (AttributeError, OSError):  # not Linux
        return None


def median_seconds(fn: Callable[[], Any], reps: int, warmup: int = 1) -> float:
    """Median wall time of ``reps`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@contextmanager
def one_core() -> Iterator[int | None]:
    """Pin this process to one core for microbenchmarks, then restore its affinity."""
    try:
        before = os.sched_getaffinity(0)
        cpu = min(before)
        os.sched_setaffinity(0, {cpu})
    except (AttributeError, OSError):  # not Linux
        yield None
        return
    try:
        yield cpu
    finally:
        os.sched_setaffinity(0, before)
