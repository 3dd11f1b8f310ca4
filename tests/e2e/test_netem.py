"""``fedge simulate --netem`` on real daemons: mTLS + secagg over impaired links; round times obey physics."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from fedge.sim.netem import NetemSpec, tbf_burst
from fedge.tasks import load_task
from tests.conftest import fedge_cli

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("ip") is None,
        reason="--netem needs root and iproute2 (network namespaces, veth, tbf); CI here runs as root",
    ),
]
PROFILE = "delay=50ms loss=1% rate=2mbit"


def test_secagg_federation_over_impaired_links(tmp_path: Path) -> None:
    work = tmp_path / "sim"
    done = fedge_cli(
        "simulate", "--clients", "3", "--rounds", "3", "--secagg", "--netem", PROFILE,
        "--set", "export=off", "--workdir", str(work), timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = (work / "server" / "runs").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == 3 and summary["secure-aggregation"] is True
    assert "(mTLS;" in (work / "server.log").read_text()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["train-replies"] for r in rows[1:]] == [3, 3, 3]

    # Lower bound of a secagg round on these links, from the profile alone. Per round every client
    # answers five exchanges in sequence (advertise, share, masked input, unmask, evaluate), each
    # an instruction down and a reply up, each delayed by `delay`; and its masked update
    # (uint32 per parameter, uniformly random: no codec can shrink it) crosses its uplink at
    # `rate`, less what the token bucket lets through at once.
    spec = NetemSpec.parse(PROFILE)
    params = sum(p.numel() for p in load_task("digits").build_model().parameters())
    masked_bits = (4 * params - tbf_burst(spec.rate)) * 8
    bound = 5 * 2 * spec.delay + masked_bits / spec.rate
    assert bound > 0.6  # ≈ 0.65 s; an unimpaired round of this federation takes < 0.1 s
    times = [r["round-seconds"] for r in rows[1:]]
    print(f"round seconds under {PROFILE}: {[round(t, 3) for t in times]}; lower bound {bound:.3f}")
    assert all(t >= bound for t in times), (times, bound)

    # Every byte went through the impaired links, losses were injected, no link was reset.
    links = json.loads((work / "netem.json").read_text())["links"]
    assert len(links) == 3
    for link in links:
        assert link["bytes-up"] >= 3 * 4 * params and link["bytes-down"] >= 3 * 4 * params
        assert link["resets"] == 0 and not link["errors"]
    assert sum(link["losses"] for link in links) > 0
    # The namespaces are gone.
    assert not [n for n in _netns() if any(link["netns"] == n for link in links)]


def _netns() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]
