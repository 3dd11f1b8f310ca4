"""ServerApp settings: defaults, types, and what reaches the strategy registry."""

from __future__ import annotations

import pytest

from fedge.errors import FedgeError
from fedge.server.run_settings import RunSettings
from fedge.tasks.settings import TrainSettings


def test_defaults() -> None:
    settings = RunSettings.from_run_config({}, run_id=42)
    assert settings.train == TrainSettings()
    assert (settings.num_server_rounds, settings.strategy, settings.min_clients) == (3, "fedavg", 2)
    assert (settings.fraction_train, settings.fraction_evaluate, settings.central_eval) == (1.0, 1.0, True)
    assert settings.round_timeout == 600.0 and settings.run_dir == "fedge-runs/42"
    assert settings.strategy_config() == {"min-clients": 2, "fraction-train": 1.0, "fraction-evaluate": 1.0}


def test_run_config_keys_reach_train_and_strategy_settings() -> None:
    settings = RunSettings.from_run_config(
        {
            "task": "mnist5k",
            "lr": 0.1,
            "strategy": "fedadam",
            "eta-l": 0.2,
            "num-malicious-nodes": 1,
            "round-timeout": 30,
            "central-eval": False,
            "run-dir": "/tmp/x",
            "export": "off",  # read by fedge.server.exports, not by RunSettings
        },
    )
    assert settings.train.task == "mnist5k" and settings.train.lr == 0.1
    assert settings.round_timeout == 30.0 and settings.central_eval is False and settings.run_dir == "/tmp/x"
    assert (
        settings.strategy_config()["eta-l"] == 0.2 and settings.strategy_config()["num-malicious-nodes"] == 1
    )
    flat = settings.as_dict()
    assert flat["task"] == "mnist5k" and flat["strategy"] == "fedadam" and "eta" not in flat


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"num-server-rounds": 0}, "invalid num-server-rounds"),
        ({"min-clients": 0}, "invalid min-clients"),
        ({"round-timeout": 0}, "invalid round-timeout"),
        ({"central-eval": 1}, "'central-eval' in run config must be bool"),
        ({"eta": "x"}, "'eta' in run config must be float"),
        ({"train": {}}, "unknown key 'train' in run config"),  # a field, but not a run-config key
    ],
)
def test_invalid_run_config(config: dict, match: str) -> None:
    with pytest.raises(FedgeError, match=match):
        RunSettings.from_run_config(config)


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [("local-epoch", "local-epochs"), ("num-server-round", "num-server-rounds"), ("expor", "export")],
)
def test_an_unknown_run_config_key_is_refused_with_the_closest_known_one(key: str, suggestion: str) -> None:
    with pytest.raises(FedgeError, match=f"unknown key '{key}' in run config") as info:
        RunSettings.from_run_config({key: 2})
    assert info.value.hint == f"did you mean '{suggestion}'?"
