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


def test_the_cli_sends_only_given_settings_and_checks_them_with_run_settings() -> None:
    from fedge.server.run_cli import DEFAULT_APP, build_run_config, privacy_sets

    sets = privacy_sets(True, None, None, None, None, None, None)
    config = build_run_config(None, None, None, 3, sets, DEFAULT_APP)
    # Defaults are RunSettings'; the planned rounds are written so the run list can show them.
    assert config == {"min-clients": 3, "secagg": True, "num-server-rounds": RunSettings().num_server_rounds}
    assert build_run_config(None, None, None, None, ["my-key=1"], "my.app:server_app") == {"my-key": 1}
    refusals = [
        (["local-epoch=2"], "unknown key 'local-epoch'.*did you mean 'local-epochs'"),
        (["strategy=fedbest"], "unknown strategy 'fedbest'"),
        (["secagg=true", "strategy=krum"], "secure aggregation cannot be used with Krum"),
        (["secagg=true", "secagg-k=2", "secagg-t=3"], "threshold t=3 exceeds k=2"),
        (privacy_sets(False, None, None, None, None, 1.0, None), "needs a bound on each update"),
        (privacy_sets(True, None, None, None, 31, None, None), "quant-bits=31 overflows uint32"),
    ]
    for given, match in refusals:
        with pytest.raises(FedgeError, match=match):
            build_run_config(None, None, None, 5, given, DEFAULT_APP)


def test_user_keys_pass_and_a_typo_does_not() -> None:
    """``x-`` keys belong to a custom ClientApp under fedge's ServerApp: neither read nor refused."""
    settings = RunSettings.from_run_config({"x-attack": "scale=1e6", "local-epochs": 2})
    assert settings.train.local_epochs == 2
    with pytest.raises(FedgeError, match="unknown key 'attack' in run config"):
        RunSettings.from_run_config({"attack": "scale=1e6"})
