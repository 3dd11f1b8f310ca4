"""Secure aggregation through fedge's real ServerApp, grid, runtime and client mod, in one process.

Clients run ``tests/apps/secagg_probe.py``, whose updates are known exactly, so every test can
compare the securely aggregated model with the plaintext FedAvg of the clients that survived.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedge.errors import FedgeError
from fedge.security.secagg import _client as secagg_client
from fedge.server.app import app as server_app
from tests.apps import secagg_probe
from tests.apps.secagg_probe import examples_for
from tests.integration.inprocess_fleet import InProcessFleet, run_server_app

CLIP, BITS, MAX_WEIGHT = 4.0, 22, 1000.0


def federate(tmp_path: Path, n: int, drop: Any = None, **overrides: Any) -> tuple[Path, InProcessFleet, Path]:
    """Run fedge's ServerApp with secagg over ``n`` in-process probe clients."""
    probe, run_dir = tmp_path / "probe", tmp_path / "run"
    probe.mkdir()
    config: dict[str, Any] = {
        "task": "digits",
        "num-server-rounds": 1,
        "strategy": "fedavg",
        "min-clients": 3,
        "secagg": True,
        "central-eval": False,
        "fraction-evaluate": 0.0,
        "run-dir": str(run_dir),
        **overrides,
    }
    nodes = {i: {"partition-id": i, "probe-dir": str(probe)} for i in range(1, n + 1)}
    fleet = InProcessFleet(secagg_probe.app, nodes, tmp_path / "edge", config, drop)
    run_server_app(server_app, fleet, config)
    return run_dir, fleet, probe


def checkpoint(run_dir: Path, server_round: int) -> dict[str, np.ndarray]:
    path = run_dir / "checkpoints" / f"round-{server_round:04d}.pt"
    state = torch.load(io.BytesIO(path.read_bytes()), weights_only=True)
    return {k: v.numpy().astype(np.float64) for k, v in state.items()}


def plaintext_fedavg(run_dir: Path, probe: Path, survivors: list[int]) -> dict[str, np.ndarray]:
    """Round 1's model as plaintext weighted FedAvg of the survivors' known updates would give."""
    start = checkpoint(run_dir, 0)
    weights = {p: min(1.0, examples_for(p) / MAX_WEIGHT) for p in survivors}
    total = sum(weights.values())
    out = {}
    for name, value in start.items():
        deltas = [np.load(probe / f"delta-r1-p{p}.npz")[name].astype(np.float64) for p in survivors]
        out[name] = value + sum(weights[p] * d for p, d in zip(survivors, deltas, strict=True)) / total
    return out


def assert_matches(run_dir: Path, probe: Path, survivors: list[int]) -> None:
    expected, got = plaintext_fedavg(run_dir, probe, survivors), checkpoint(run_dir, 1)
    total = sum(min(1.0, examples_for(p) / MAX_WEIGHT) for p in survivors)
    # Each of m quantized vectors is off by at most half a step; float32 storage adds ~1e-7.
    tolerance = len(survivors) * (2 * CLIP / (2**BITS - 1)) / 2 / total + 1e-6
    for name in expected:
        err = np.max(np.abs(expected[name] - got[name]), initial=0.0)
        assert err <= tolerance, f"{name}: off by {err:.3g} > {tolerance:.3g}"
    # And it really is the survivors' mean: leaving one survivor out would be far off.
    if len(survivors) > 3:
        wrong = plaintext_fedavg(run_dir, probe, survivors[:-1])
        assert any(np.max(np.abs(wrong[k] - got[k])) > 100 * tolerance for k in wrong)


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_secure_round_equals_plaintext_fedavg(tmp_path: Path) -> None:
    run_dir, _, probe = federate(tmp_path, 5)
    assert_matches(run_dir, probe, [1, 2, 3, 4, 5])
    last = metrics(run_dir)[-1]
    assert last["train-replies"] == 5 and last["secagg-dropouts"] == 0


@pytest.mark.parametrize(
    ("stage", "survivors"),
    [
        ("advertise", [1, 2, 4, 5]),
        ("share", [1, 2, 4, 5]),
        ("mask", [1, 2, 4, 5]),
        # Node 3 sent its masked input before vanishing: its update is in the sum.
        ("unmask", [1, 2, 3, 4, 5]),
    ],
)
def test_a_dropout_at_any_stage_is_recovered(tmp_path: Path, stage: str, survivors: list[int]) -> None:
    run_dir, _, probe = federate(tmp_path, 5, drop=lambda node, s: node == 3 and s == stage)
    assert_matches(run_dir, probe, survivors)
    assert metrics(run_dir)[-1]["train-replies"] == len(survivors)


def test_dropouts_at_several_stages(tmp_path: Path) -> None:
    # n=10: k=8, t=5, so each neighbourhood may lose three.
    lost = {2: "share", 5: "mask", 7: "unmask"}
    run_dir, _, probe = federate(tmp_path, 10, drop=lambda node, s: lost.get(node) == s)
    assert_matches(run_dir, probe, [1, 3, 4, 6, 7, 8, 9, 10])


def test_too_many_dropouts_fail_the_round_clearly(tmp_path: Path) -> None:
    with pytest.raises(FedgeError, match=r"secure aggregation, round 1: only 2 of 5 clients completed"):
        federate(tmp_path, 5, drop=lambda node, s: node in (1, 2, 3) and s == "mask")


def test_distributed_dp_never_unmasks_fewer_than_the_noise_shares(tmp_path: Path) -> None:
    # Each client adds 1/min-clients of the noise variance: 4 survivors of 5 carry too little.
    with pytest.raises(FedgeError, match=r"only 4 of 5 clients completed masked-input, 5 are needed"):
        federate(
            tmp_path,
            5,
            drop=lambda node, s: node == 2 and s == "mask",
            **{"min-clients": 5, "dp-noise": 1.0, "clip": 0.5},
        )


def test_server_never_receives_or_stores_an_individual_update(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    quantized: list[np.ndarray] = []
    real = secagg_client.quantize

    def recording(values: np.ndarray, clip: float, bits: int) -> np.ndarray:
        q = real(values, clip, bits)
        quantized.append(q.copy())  # the caller adds the masks into q in place
        return q

    masked: list[np.ndarray] = []
    real_mask = secagg_client.ClientSession.masked_input

    def recording_mask(self: Any, *args: Any) -> np.ndarray:
        masked.append(real_mask(self, *args).copy())
        return masked[-1]

    monkeypatch.setattr(secagg_client, "quantize", recording)
    monkeypatch.setattr(secagg_client.ClientSession, "masked_input", recording_mask)
    run_dir, fleet, probe = federate(tmp_path, 5)
    assert len(quantized) == len(masked) == 5
    seen = b"".join(fleet.received) + b"".join(p.read_bytes() for p in run_dir.rglob("*") if p.is_file())
    for y in masked:  # the search works: what the clients did send is found
        assert y.tobytes()[1000:1064] in seen
    for q in quantized:
        # Any 64-byte window of a client's quantized update (high entropy: its low bits are the
        # update's) appearing anywhere the server received or wrote would be a leak.
        raw = q.tobytes()
        for start in range(0, len(raw) - 64, len(raw) // 8):
            assert raw[start : start + 64] not in seen
    for path in probe.glob("delta-r1-*.npz"):  # nor any slice of a plaintext delta
        for delta in np.load(path).values():
            raw = delta.tobytes()
            if len(raw) >= 256:
                assert raw[128:192] not in seen


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"strategy": "krum"}, "secure aggregation cannot be used with Krum"),
        ({"strategy": "fedmedian"}, "cannot be used with FedMedian"),
        ({"secagg-k": 2, "secagg-t": 3}, "threshold t=3 exceeds k=2"),
        ({"min-clients": 2}, "needs at least 3 clients per round, got 2"),
        ({"dp-noise": 1.0}, "needs a bound on each update"),
    ],
)
def test_refusals_come_before_any_round(tmp_path: Path, overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(FedgeError, match=message):
        federate(tmp_path, 5, **overrides)
    assert not (tmp_path / "run" / "checkpoints").exists(), "a round started"


def test_distributed_dp_reports_growing_epsilon(tmp_path: Path) -> None:
    run_dir, _, _ = federate(tmp_path, 5, **{"num-server-rounds": 3, "dp-noise": 1.0, "clip": 0.5})
    eps = [row["dp-epsilon"] for row in metrics(run_dir) if row["round"] > 0]
    assert len(eps) == 3 and eps[0] > 0 and eps[0] < eps[1] < eps[2]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["dp-epsilon"] == pytest.approx(eps[-1])
    assert "after 3 rounds" in summary["privacy"]
    # Clipped to 0.5 and noised: the model moved, but by a bounded, noisy step.
    start, end = checkpoint(run_dir, 0), checkpoint(run_dir, 1)
    assert any(np.max(np.abs(end[k] - start[k])) > 0 for k in start)


def test_dp_off_says_so(tmp_path: Path) -> None:
    run_dir, _, _ = federate(tmp_path, 3)
    assert all("dp-epsilon" not in row for row in metrics(run_dir))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["privacy"].startswith("DP off") and summary["dp-epsilon"] is None


class Killed(BaseException):
    """Stands for SIGKILL of the server: nothing in the app may catch it."""


def _secure_run(run_dir: Path, probe: Path, edge: Path, drop: Any = None, resume: bool = False) -> None:
    config: dict[str, Any] = {
        "task": "digits",
        "num-server-rounds": 3,
        "strategy": "fedavgm",
        "server-momentum": 0.9,
        "min-clients": 3,
        "secagg": True,
        "central-eval": False,
        "fraction-evaluate": 0.0,
        "run-dir": str(run_dir),
        **({"resume": True} if resume else {}),
    }
    nodes = {i: {"partition-id": i, "probe-dir": str(probe)} for i in range(1, 6)}
    run_server_app(server_app, InProcessFleet(secagg_probe.app, nodes, edge, config, drop), config)


def test_a_secure_run_killed_in_round_2_resumes_to_the_uninterrupted_model(tmp_path: Path) -> None:
    probe = tmp_path / "probe"
    probe.mkdir()
    _secure_run(tmp_path / "whole", probe, tmp_path / "edge-a")
    masks_seen = []

    def die_in_round_2(node: int, stage: str) -> bool:
        masks_seen.append(stage == "mask")
        if sum(masks_seen) > 5:  # round 2's first masked-input instruction
            raise Killed
        return False

    with pytest.raises(Killed):
        _secure_run(tmp_path / "cut", probe, tmp_path / "edge-b", drop=die_in_round_2)
    assert not (tmp_path / "cut" / "checkpoints" / "round-0002.pt").exists()
    resumed_masks: list[int] = []
    _secure_run(
        tmp_path / "cut",
        probe,
        tmp_path / "edge-b",
        drop=lambda node, stage: resumed_masks.append(stage == "mask") and False,
        resume=True,
    )
    assert sum(resumed_masks) == 10, "the resumed run must train rounds 2 and 3 only"
    whole, cut = checkpoint(tmp_path / "whole", 3), checkpoint(tmp_path / "cut", 3)
    # Masks cancel exactly and quantization is deterministic: the FedAvgM momentum restored from
    # the round-1 commit must give the very same model.
    assert all(np.array_equal(whole[k], cut[k]) for k in whole)
