"""Fleet stream admission: a cap, one stream per identity, a Hello deadline (fake contexts)."""

from __future__ import annotations

import threading
from typing import Any

from fedge.server.admission import StreamAdmission


class Context:
    def __init__(self, peer: str) -> None:
        self._peer = peer
        self.cancelled = threading.Event()

    def peer(self) -> str:
        return self._peer

    def cancel(self) -> None:
        self.cancelled.set()


def test_a_new_stream_replaces_the_identitys_older_one_and_the_cap_holds() -> None:
    lines: list[tuple[str, dict[str, Any]]] = []
    gate = StreamAdmission(2, 60.0, lambda event, **f: lines.append((event, f)))
    first, second, other, third = Context("a:1"), Context("a:2"), Context("b:1"), Context("c:1")
    try:
        assert gate.admit(first, "edge")  # type: ignore[arg-type]
        assert gate.admit(second, "edge")  # type: ignore[arg-type]
        assert first.cancelled.is_set() and lines[-1][0] == "replaced"
        gate.release(first, "edge")  # type: ignore[arg-type]
        assert gate.admit(other, "other")  # type: ignore[arg-type]
        assert not gate.admit(third, "third")  # type: ignore[arg-type]
        assert lines[-1] == ("refused", {"node": "third", "peer": "c:1", "reason": "too many streams"})
        gate.release(second, "edge")  # type: ignore[arg-type]
        assert gate.admit(third, "third")  # type: ignore[arg-type]
    finally:
        gate.stop()


def test_a_stream_without_hello_is_cancelled_after_the_deadline() -> None:
    lines: list[str] = []
    gate = StreamAdmission(8, 0.2, lambda event, **f: lines.append(event))
    silent, greeted = Context("a:1"), Context("b:1")
    try:
        gate.admit(silent, "quiet")  # type: ignore[arg-type]
        gate.admit(greeted, "talker")  # type: ignore[arg-type]
        gate.hello(greeted)  # type: ignore[arg-type]
        assert silent.cancelled.wait(5)
        assert not greeted.cancelled.wait(0.5)
        assert lines == ["hello-timeout"]
    finally:
        gate.stop()
