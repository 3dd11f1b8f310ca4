"""Enrollment backoff: per key, exponential, bounded in memory, cleared by a success."""

from __future__ import annotations

from fedge.server import lockout
from fedge.server.lockout import Lockout


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_nth_failure_locks_and_each_further_one_doubles() -> None:
    clock = Clock()
    gate = Lockout(3, 10.0, clock)
    for _ in range(2):
        gate.failed("source:a", "name:x")
    assert gate.remaining("source:a") == 0
    gate.failed("source:a", "name:x")
    assert gate.remaining("source:a") == 10.0 and gate.remaining("name:x") == 10.0
    assert gate.remaining("source:b", "name:y") == 0  # other sources and names are not held back
    assert gate.remaining("source:b", "name:x") == 10.0  # but a locked name is, from anywhere
    clock.now = 10.0
    gate.failed("source:a")
    assert gate.remaining("source:a") == 20.0
    gate.succeeded("source:a")
    assert gate.remaining("source:a") == 0


def test_the_lockout_is_capped_and_memory_bounded() -> None:
    gate = Lockout(1, 10.0, Clock())
    for _ in range(100):
        gate.failed("source:a")
    assert gate.remaining("source:a") == lockout.MAX_LOCKOUT
    for i in range(lockout.MAX_KEYS + 10):
        gate.failed(f"source:{i}")
    assert len(gate._keys) == lockout.MAX_KEYS
