"""`fedge simulate --from-compose`: compose.yaml's own service commands as processes, to a finished run."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, fedge_cli

pytestmark = pytest.mark.e2e


def test_three_edges_from_the_compose_commands_finish_a_run(tmp_path: Path) -> None:
    work = tmp_path / "sim"
    done = fedge_cli(
        "simulate", "--from-compose", str(REPO / "compose" / "compose.yaml"), "--clients", "3",
        "--rounds", "2", "--workdir", str(work), timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "run | round   2:" in done.stderr

    volumes = work / "volumes"
    (run_dir,) = (volumes / "server-state" / "runs").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["settings"]["min-clients"] == 3
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["train-replies"] for r in rows[1:]] == [3, 3]

    # The pki one-shot made a token per edge; each replica enrolled itself under its own name,
    # with its key in its own (anonymous-volume) state dir, and connected over mTLS.
    assert sorted(p.name for p in (volumes / "tokens").iterdir()) == [f"edge-{n}.token" for n in (1, 2, 3)]
    for n in (1, 2, 3):
        state = work / "containers" / f"edge-{n}" / "var" / "lib" / "fedge"
        assert (state / "tls.pem").is_file() and (state / "tls.key").is_file()
    audit = [json.loads(line) for line in (volumes / "server-state" / "audit.jsonl").read_text().splitlines()]
    assert {e["node"] for e in audit if e["event"] == "enrolled"} == {"edge-1", "edge-2", "edge-3"}
    assert {e["node"] for e in audit if e["event"] == "connect"} == {"edge-1", "edge-2", "edge-3"}
    assert "(mTLS;" in (work / "logs" / "server-1.log").read_text()
    # Each replica found its own number (FEDGE_REPLICA here, the container name under Docker),
    # which the compose command turns into its name, token and partition (n-1 of 3).
    for n in (1, 2, 3):
        assert (
            f"replica {n} of 3: {{n}}={n} {{index}}={n - 1}" in (work / "logs" / f"edge-{n}.log").read_text()
        )

    # Nothing is left running from the workdir.
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(work) not in ps
