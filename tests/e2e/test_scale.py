"""Scale-out: Flower's Ray engine with 100 virtual clients (the 1000-client run is bench/scale.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import fedge_cli

pytestmark = pytest.mark.e2e


def test_ray_engine_100_clients_two_rounds(tmp_path: Path) -> None:
    work = tmp_path / "ray"
    done = fedge_cli(
        "simulate",
        "--engine",
        "ray",
        "--clients",
        "100",
        "--rounds",
        "2",
        "--workdir",
        str(work),
        timeout=420,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2]
    for row in rows[1:]:
        assert row["train-replies"] == 100 and row["train-failures"] == 0
        assert row["eval-replies"] == 100 and row["eval-failures"] == 0
