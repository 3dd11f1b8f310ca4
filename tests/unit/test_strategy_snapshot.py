"""Generic capture of Flower strategies' server-side state and of the RNGs, through a commit file."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM

from fedge.errors import FedgeError
from fedge.security.dp import DPSettings
from fedge.server.commit import dumps, loads
from fedge.server.snapshot import restore_rng, restore_strategy, rng_state, strategy_state
from fedge.strategies.central_dp import central_dp_strategy


def _through_a_file(state: dict) -> dict:
    return loads(dumps({"s": state}))["s"]


def test_fedadam_moments_survive_a_commit() -> None:
    rng = np.random.default_rng(0)
    strategy = FedAdam(eta=0.05)
    strategy.current_arrays = {"w": rng.standard_normal((2, 3)).astype(np.float32)}
    strategy.m_t = {"w": rng.standard_normal((2, 3)).astype(np.float32)}
    strategy.v_t = {"w": rng.random((2, 3)).astype(np.float32)}
    state = _through_a_file(strategy_state(strategy))
    assert {"m_t", "v_t", "current_arrays", "eta", "beta_1"} <= set(state["attrs"])
    assert "train_metrics_aggr_fn" not in state["attrs"]  # a function: configuration, not state

    fresh = FedAdam(eta=0.05)
    restore_strategy(fresh, state)
    for name in ("current_arrays", "m_t", "v_t"):
        got, want = getattr(fresh, name)["w"], getattr(strategy, name)["w"]
        assert got.dtype == want.dtype and np.array_equal(got, want), name


def test_fedavgm_momentum_inside_a_wrapper_survives_a_commit() -> None:
    inner = FedAvgM(server_momentum=0.9)
    inner.momentum_vector = [np.ones(3, dtype=np.float32), np.arange(2, dtype=np.float64)]
    inner.current_arrays = ArrayRecord({"b": Array(np.zeros(2))})
    wrapper = central_dp_strategy(FedAvg(), DPSettings(noise_multiplier=1.0, clip_norm=1.0, delta=1e-5), 2)
    wrapper.strategy = inner  # wrappers hold the wrapped strategy in an attribute
    state = _through_a_file(strategy_state(wrapper))
    assert state["class"] == "_UniformCentralDP" and set(state["nested"]) == {"strategy"}

    fresh = central_dp_strategy(FedAvg(), DPSettings(noise_multiplier=1.0, clip_norm=1.0, delta=1e-5), 2)
    fresh.strategy = FedAvgM(server_momentum=0.9)
    restore_strategy(fresh, state)
    restored = fresh.strategy
    assert isinstance(restored, FedAvgM) and restored.momentum_vector is not None
    assert [a.dtype for a in restored.momentum_vector] == [np.float32, np.float64]
    assert all(
        np.array_equal(a, b) for a, b in zip(restored.momentum_vector, inner.momentum_vector, strict=True)
    )
    assert restored.current_arrays is not None and list(restored.current_arrays.keys()) == ["b"]


def test_state_of_another_strategy_is_refused() -> None:
    with pytest.raises(FedgeError, match="belongs to strategy FedAdam"):
        restore_strategy(FedAvg(), _through_a_file(strategy_state(FedAdam())))


def test_rng_states_survive_a_commit() -> None:
    state = _through_a_file(rng_state())
    expected = (random.random(), np.random.random(), torch.rand(1).item())
    restore_rng(state)
    assert (random.random(), np.random.random(), torch.rand(1).item()) == expected
