"""Shared fixtures: real fedge processes on 127.0.0.1, torn down whatever happens."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedge.sim.local import LocalFederation

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[LocalFederation]:
    """A LocalFederation (server + daemons as subprocesses) in a temp dir."""
    fed = LocalFederation(tmp_path)
    try:
        yield fed
    finally:
        fed.close()


def fedge_cli(*args: str, timeout: float = 300, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """Run the real ``fedge`` command; returns the completed process (text)."""
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    return subprocess.run(
        [sys.executable, "-m", "fedge", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
    )
