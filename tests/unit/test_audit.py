"""The audit log stays bounded: long fields are cut, repeats per identity are counted, not written."""

from __future__ import annotations

import json
from pathlib import Path

from fedge.server import audit as audit_mod
from fedge.server.audit import AuditLog


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_field_is_cut_to_a_bounded_length(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    log.write("enroll-refused", node="x" * 3_000_000, reason=["r" * 1000], peer="ipv4:1.2.3.4:5", count=7)
    assert (tmp_path / "audit.jsonl").stat().st_size < 1024
    (line,) = _lines(tmp_path / "audit.jsonl")
    assert str(line["node"]).endswith(f"[{3_000_000 - audit_mod.MAX_FIELD} more chars]")
    assert line["count"] == 7 and line["event"] == "enroll-refused"


def test_repeats_per_identity_are_suppressed_and_counted(tmp_path: Path) -> None:
    clock = Clock()
    log = AuditLog(tmp_path / "audit.jsonl", clock)
    for _ in range(2000):
        log.write("model-refused", node="edge-1", version="v")
    log.write("model-refused", node="edge-2", version="v")  # another device is not held back
    lines = _lines(tmp_path / "audit.jsonl")
    assert len(lines) == audit_mod.BURST + 2
    assert lines[audit_mod.BURST]["event"] == "audit-suppressed" and lines[-1]["node"] == "edge-2"
    clock.now = audit_mod.WINDOW
    log.write("model-refused", node="edge-1", version="v")
    assert _lines(tmp_path / "audit.jsonl")[-1]["suppressed"] == 2000 - audit_mod.BURST
