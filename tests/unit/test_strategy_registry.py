"""Strategy registry: every name builds Flower's own class with the run-config parameters."""

from __future__ import annotations

import pytest
from flwr.serverapp import strategy as fl

from fedge.errors import FedgeError
from fedge.strategies import STRATEGIES, build_strategy

# name -> (Flower class, run-config overrides, expected attribute values)
CASES = {
    "fedavg": (fl.FedAvg, {}, {}),
    "fedprox": (fl.FedProx, {"proximal-mu": 0.1}, {"proximal_mu": 0.1}),
    "fedavgm": (
        fl.FedAvgM,
        {"server-learning-rate": 0.5, "server-momentum": 0.9},
        {"server_learning_rate": 0.5, "server_momentum": 0.9},
    ),
    "fedadam": (
        fl.FedAdam,
        {"eta": 0.2, "eta-l": 0.3, "beta-1": 0.8, "beta-2": 0.95, "tau": 1e-4},
        {"eta": 0.2, "eta_l": 0.3, "beta_1": 0.8, "beta_2": 0.95, "tau": 1e-4},
    ),
    "fedyogi": (fl.FedYogi, {"eta": 0.02, "beta-2": 0.9}, {"eta": 0.02, "beta_2": 0.9, "eta_l": 0.0316}),
    "fedadagrad": (
        fl.FedAdagrad,
        {"eta": 0.3, "eta-l": 0.2, "tau": 0.01},
        {"eta": 0.3, "eta_l": 0.2, "tau": 0.01},
    ),
    "fedmedian": (fl.FedMedian, {}, {}),
    "fedtrimmedavg": (fl.FedTrimmedAvg, {"trim-beta": 0.1}, {"beta": 0.1}),
    "krum": (fl.Krum, {"num-malicious-nodes": 1}, {"num_malicious_nodes": 1, "num_nodes_to_select": 1}),
    "multikrum": (
        fl.MultiKrum,
        {"num-malicious-nodes": 1, "num-nodes-to-select": 3},
        {"num_malicious_nodes": 1, "num_nodes_to_select": 3},
    ),
    "bulyan": (fl.Bulyan, {"num-malicious-nodes": 1}, {"num_malicious_nodes": 1}),
}


def test_every_registered_name_is_covered() -> None:
    assert set(STRATEGIES) == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_builds_flower_class_with_parameters(name: str) -> None:
    cls, overrides, expected = CASES[name]
    config = {"min-clients": 7, "fraction-train": 0.5, "fraction-evaluate": 0.25, **overrides}
    strategy = build_strategy(name, config)
    assert type(strategy) is cls
    assert (strategy.min_train_nodes, strategy.min_evaluate_nodes, strategy.min_available_nodes) == (7, 7, 7)
    assert (strategy.fraction_train, strategy.fraction_evaluate) == (0.5, 0.25)
    for attr, value in expected.items():
        assert getattr(strategy, attr) == pytest.approx(value), attr


def test_missing_keys_keep_flower_defaults_and_foreign_keys_are_ignored() -> None:
    strategy = build_strategy("fedyogi", {"proximal-mu": 3.0, "task": "digits"})
    assert (strategy.eta, strategy.min_train_nodes, strategy.fraction_train) == (0.01, 2, 1.0)
    assert not hasattr(strategy, "proximal_mu")


def test_ints_are_accepted_for_floats() -> None:
    assert build_strategy("fedavgm", {"server-learning-rate": 1}).server_learning_rate == 1.0


def test_unknown_strategy_lists_choices() -> None:
    with pytest.raises(FedgeError) as err:
        build_strategy("fedfoo", {})
    assert err.value.message == "unknown strategy 'fedfoo'"
    assert err.value.hint == "choose one of: " + ", ".join(STRATEGIES)


@pytest.mark.parametrize(
    ("name", "config", "match"),
    [
        ("fedavg", {"min-clients": 2.5}, "'min-clients' must be int"),
        ("fedavg", {"min-clients": True}, "'min-clients' must be int"),
        ("fedavg", {"min-clients": 0}, "invalid min-clients"),
        ("fedavg", {"fraction-train": 1.5}, "invalid fraction-train"),
        ("fedadam", {"eta": "fast"}, "'eta' must be float"),
        ("fedtrimmedavg", {"trim-beta": 0.5}, "invalid trim-beta"),
        ("krum", {"num-malicious-nodes": -1}, "invalid num-malicious-nodes"),
        ("multikrum", {"num-nodes-to-select": 0}, "invalid num-nodes-to-select"),
        ("bulyan", {"min-clients": 6, "num-malicious-nodes": 1}, "needs at least 7 clients"),
    ],
)
def test_bad_parameters_are_actionable(name: str, config: dict, match: str) -> None:
    with pytest.raises(FedgeError, match=match) as err:
        build_strategy(name, config)
    assert err.value.hint
